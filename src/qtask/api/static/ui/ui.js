// qtask's web page: submit OpenQASM, list the caller's tasks with live state, show results.
// Plain DOM, no framework, no build step. Every text from the server goes in with textContent
// (error messages quote the circuit); nothing is ever written with innerHTML.
"use strict";

const KEY_STORE = "qtask.apiKey"; // sessionStorage only: gone when the tab closes
const ENDED = new Set(["completed", "error", "cancelled"]);
const MAX_SOCKETS = 20; // live streams this page keeps open at once
const LINE_COLUMN = /line (\d+)(?:, column (\d+))?/i;

const $ = (id) => document.getElementById(id);
const rows = new Map(); // task id -> <tr>
const sockets = new Map(); // task id -> WebSocket
const states = new Map(); // task id -> latest body
let backendsKnown = false;
let selected = null;
let nextCursor = null;
let keyWaiters = [];

function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = { message: `HTTP ${response.status}` };
  }
  if (response.status === 401) {
    askForKey(data && data.message);
    throw new Unauthorized(data && data.message);
  }
  return { status: response.status, data };
}

// --- API key --------------------------------------------------------------------------------

function askForKey(reason) {
  $("key-panel").hidden = false;
  $("key-reason").textContent = reason || "This server requires an API key.";
  $("api-key").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
  $("api-key").value = "";
  $("key-panel").hidden = true;
  const waiting = keyWaiters;
  keyWaiters = [];
  waiting.forEach((resolve) => resolve());
  loadBackends();
  refreshList();
});

// --- Backends -------------------------------------------------------------------------------

async function loadBackends() {
  let answer;
  try {
    answer = await api("GET", "/backends");
  } catch (_) {
    return; // keep "aer"
  }
  if (answer.status !== 200 || !Array.isArray(answer.data.backends)) return;
  const select = $("backend");
  select.replaceChildren();
  for (const backend of answer.data.backends) {
    const option = document.createElement("option");
    option.value = backend.name;
    const health = backend.health && backend.health !== "ok" ? ` (${backend.health})` : "";
    option.textContent = `${backend.name}${health}`;
    option.selected = backend.name === answer.data.default;
    select.append(option);
  }
  backendsKnown = select.options.length > 0;
}

// --- Submitting -----------------------------------------------------------------------------

$("qasm-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (file) $("qasm").value = await file.text();
});

function showError(prefix, message) {
  const box = $(`${prefix}-error`);
  const where = message.match(LINE_COLUMN);
  $(`${prefix}-error-where`).textContent = where
    ? `Line ${where[1]}${where[2] ? `, column ${where[2]}` : ""}`
    : "Error";
  $(`${prefix}-error-message`).textContent = message;
  box.hidden = false;
}

// Put the editor's caret where the server's message says the error is.
function pointAt(message) {
  const where = message.match(LINE_COLUMN);
  if (!where) return;
  const editor = $("qasm");
  const lines = editor.value.split("\n");
  const line = Math.min(Number(where[1]), lines.length);
  let offset = 0;
  for (let i = 0; i < line - 1; i += 1) offset += lines[i].length + 1;
  offset += Math.max(0, Math.min(Number(where[2] || 1) - 1, lines[line - 1].length));
  editor.focus();
  editor.setSelectionRange(offset, offset);
}

$("submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("submit-error").hidden = true;
  const body = { qc: $("qasm").value, shots: Number($("shots").value) };
  if (backendsKnown) body.backend = $("backend").value;
  $("submit").disabled = true;
  try {
    let answer;
    for (;;) {
      try {
        answer = await api("POST", "/tasks", body);
        break;
      } catch (error) {
        if (!(error instanceof Unauthorized)) throw error;
        await new Promise((resolve) => keyWaiters.push(resolve)); // retried once a key is given
      }
    }
    if (answer.status !== 202) {
      const message = String(answer.data.message || `HTTP ${answer.status}`);
      showError("submit", message);
      pointAt(message);
      return;
    }
    const id = answer.data.task_id;
    addRow({ task_id: id, created_at: Date.now() / 1000, state: "queued" }, true);
    select(id);
  } catch (error) {
    showError("submit", `The server could not be reached: ${error.message}`);
  } finally {
    $("submit").disabled = false;
  }
});

// --- The task list --------------------------------------------------------------------------

function stateOf(body) {
  if (body.state) return body.state;
  if (body.status === "pending") return "queued";
  return body.status;
}

function addRow(body, first) {
  const id = body.task_id;
  let row = rows.get(id);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.taskId = id;
    const idCell = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = id;
    idCell.append(code);
    const when = document.createElement("td");
    when.textContent = new Date(body.created_at * 1000).toLocaleString();
    const stateCell = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = "state";
    stateCell.append(badge);
    row.append(idCell, when, stateCell);
    row.addEventListener("click", () => select(id));
    rows.set(id, row);
    if (first) $("tasks").prepend(row);
    else $("tasks").append(row);
  }
  update(id, body);
}

function update(id, body) {
  const previous = states.get(id) || {};
  const merged = { ...previous, ...body };
  if (body.state) merged.state = body.state;
  else if (body.status) merged.state = stateOf(body);
  states.set(id, merged);
  const row = rows.get(id);
  if (row) {
    const badge = row.querySelector(".state");
    badge.textContent = merged.state;
    badge.className = `state state-${merged.state}`;
  }
  if (!ENDED.has(merged.state)) follow(id);
  if (id === selected) render(id);
}

async function refreshList(more) {
  const params = new URLSearchParams({ limit: "25" });
  if (more && nextCursor) params.set("cursor", nextCursor);
  $("list-error").hidden = true;
  let answer;
  try {
    answer = await api("GET", `/tasks?${params}`);
  } catch (error) {
    if (!(error instanceof Unauthorized)) {
      $("list-error").textContent = `The server could not be reached: ${error.message}`;
      $("list-error").hidden = false;
    }
    return;
  }
  if (answer.status !== 200) {
    $("list-error").textContent = String(answer.data.message || `HTTP ${answer.status}`);
    $("list-error").hidden = false;
    return;
  }
  for (const body of answer.data.tasks) addRow(body, false);
  nextCursor = answer.data.next_cursor;
  $("more").hidden = !nextCursor;
}

$("refresh").addEventListener("click", () => refreshList(false));
$("more").addEventListener("click", () => refreshList(true));

// --- Live state: one websocket per unfinished task ------------------------------------------

function follow(id) {
  if (sockets.has(id) || sockets.size >= MAX_SOCKETS) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/tasks/${encodeURIComponent(id)}/events`);
  sockets.set(id, socket);
  socket.addEventListener("open", () => {
    const key = apiKey();
    if (key) socket.send(JSON.stringify({ api_key: key })); // browsers cannot set headers here
  });
  socket.addEventListener("message", (event) => update(id, JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    sockets.delete(id);
    const state = (states.get(id) || {}).state;
    if (event.code === 4401) askForKey(event.reason).then(() => follow(id));
    else if (event.code === 4404) update(id, { state: "error", status: "error", message: event.reason });
    else if (!ENDED.has(state)) setTimeout(() => follow(id), 2000); // idle or dropped: follow on
    followWaiting();
  });
}

function followWaiting() {
  for (const [id, body] of states) {
    if (sockets.size >= MAX_SOCKETS) return;
    if (!ENDED.has(body.state)) follow(id);
  }
}

// --- The selected task ----------------------------------------------------------------------

function select(id) {
  selected = id;
  for (const [other, row] of rows) row.classList.toggle("selected", other === id);
  render(id);
}

function render(id) {
  const body = states.get(id) || {};
  $("detail-id").textContent = id;
  $("detail-error").hidden = true;
  $("histogram").hidden = true;
  if (body.state === "completed" && body.result) {
    $("detail-state").textContent = "completed";
    drawHistogram(body.result);
  } else if (body.state === "error" || body.state === "cancelled") {
    $("detail-state").textContent = body.state;
    showError("detail", String(body.message || "The task failed."));
  } else {
    $("detail-state").textContent = `${body.state || "queued"}…`;
  }
}

function drawHistogram(counts) {
  const outcomes = Object.keys(counts).sort();
  const total = outcomes.reduce((sum, outcome) => sum + counts[outcome], 0) || 1;
  const most = Math.max(...outcomes.map((outcome) => counts[outcome]), 1);
  const box = $("histogram");
  box.replaceChildren();
  for (const outcome of outcomes) {
    const count = counts[outcome];
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = outcome;
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar bar-fill";
    fill.dataset.outcome = outcome;
    fill.style.width = `${(100 * count) / most}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = `${count} (${((100 * count) / total).toFixed(1)} %)`;
    box.append(label, track, value);
  }
  box.hidden = false;
}

// --- Start ----------------------------------------------------------------------------------

$("qasm").value = `OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[2] c;
h q[0];
cx q[0], q[1];
c = measure q;
`;
loadBackends();
refreshList(false);
