"""The experiment's processes: a `qtask coordinator` and N `qtask node`s on loopback.

Each process gets free ports, its settings file and its JSON log in the run's directory, and
its own process group (a node drop signals the whole group: the node and its Aer children).
A process is ready when it logs its ready line (`mesh_node_ready`, `coordinator_started`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qtask.mesh.config import NodeSettings

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def faults_supported() -> bool:
    """Whether this qtask's node has the fault layer (`[mesh.node] faults_enabled`)."""
    return "faults_enabled" in NodeSettings.model_fields


@dataclass
class Process:
    """One started process whose log is a file of JSON lines."""

    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False

    @property
    def peer_id(self) -> str:
        return str(self.ready.get("peer_id", ""))

    @property
    def addr(self) -> str:
        return str(self.ready["addrs"][0])

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def launch(self) -> None:
        self.popen = spawn(self.command, self.log_path, self.env)

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (other lines skipped)."""
        if not self.log_path.exists():
            return []
        return json_lines(self.log_path.read_text(errors="replace"))

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """The first log line with this event, polled until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.lines():
                if entry.get("event") == event:
                    return entry
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited before {event}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {event} in {timeout} s; see {self.log_path}")
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGCONT (it may be stopped), SIGTERM, wait; SIGKILL what is left."""
        if self.popen is None or self.stopped:
            return
        self.stopped = True
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


def spawn(command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `command` in its own process group, unbuffered, its output appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, start_new_session=True,
        )  # fmt: skip


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON object lines of a log (other lines skipped)."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


def toml_value(value: Any) -> str:
    """`value` as a TOML value (settings files of the started processes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


class Cluster:
    """A coordinator (optional) and nodes started in `directory`; `close()` stops them all."""

    def __init__(
        self,
        directory: Path,
        noises: list[dict[str, float]],
        *,
        coordinator: bool,
        coordinator_env: dict[str, str] | None = None,
        calibration_shots: int = 1000,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.noises = noises
        self.calibration_shots = calibration_shots
        self.coordinator: Process | None = None
        self.url = ""
        self.nodes: list[Process] = []
        self._want_coordinator = coordinator
        self._coordinator_env = coordinator_env or {}

    def start(self, timeout: float = 120.0) -> Cluster:
        try:
            bootstrap: list[str] = []
            if self._want_coordinator:
                self.coordinator = self._start_coordinator(timeout)
                bootstrap = [self.coordinator.addr]
            self.nodes = [self._node(i, noise, bootstrap) for i, noise in enumerate(self.noises)]
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.ready = node.wait_for("mesh_node_ready", timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for process in [*self.nodes, *([self.coordinator] if self.coordinator else [])]:
            process.stop()

    def _start_coordinator(self, timeout: float) -> Process:
        port = free_port()
        directory = self.directory / "coordinator"
        directory.mkdir(exist_ok=True)
        env = {
            "QTASK_MESH__COORDINATOR__DATABASE": str(directory / "mesh.db"),
            "QTASK_MESH__COORDINATOR__IDENTITY_FILE": str(directory / "identity.key"),
            "QTASK_MESH__COORDINATOR__LISTEN": LOOPBACK,
            "QTASK_LOG__JSON_OUTPUT": "true",
            **self._coordinator_env,
        }
        process = Process(
            "coordinator",
            [sys.executable, "-m", "qtask", "coordinator", "--port", str(port)],
            directory / "coordinator.log",
            env,
        )
        process.launch()
        process.ready = process.wait_for("coordinator_started", timeout)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return process
            if time.monotonic() > deadline:
                process.stop()
                raise TimeoutError(f"coordinator not ready in {timeout} s; see {process.log_path}")
            time.sleep(0.05)

    def _node(self, index: int, noise: dict[str, float], bootstrap: list[str]) -> Process:
        name = f"n{index}"
        settings: dict[str, Any] = {
            "listen": LOOPBACK,
            "bootstrap": bootstrap,
            "advert_interval_s": 0.5,
            "calibration_shots": self.calibration_shots,
            "identity_file": str(self.directory / f"{name}.key"),
            "noise": noise,
        }
        if faults_supported():
            settings["faults_enabled"] = True
        config = self.directory / f"{name}.toml"
        lines = ["[log]", 'level = "INFO"', "json_output = true", "", "[mesh.node]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in settings.items()]
        config.write_text("\n".join(lines) + "\n")
        return Process(
            name,
            [sys.executable, "-m", "qtask", "node", "--config", str(config)],
            self.directory / f"{name}.log",
        )
