"""How fast tasks recover after a worker dies, and what a NATS outage costs, per NATS ack wait.

    .venv/bin/python benchmarks/recovery.py [--ack-wait 30 --ack-wait 6] [--runs 5] [--outage]

Distributed deployment on real servers (tests/servers.DistributedDeployment): redis-server,
nats-server, rclone S3, `qtask api`, 2 `qtask worker`s of one process each, `qtask poller`.

Worker kill, per run: submit `--tasks` short circuits (18 qubits, ~0.2 s each, too wide to be
batched), wait until one worker holds some of them running, SIGKILL that worker (its process
group, children included) and read from Redis, for every task the victim held, the time from
the kill to the task's stored `finished_at`. Then a fresh worker replaces the victim. One row
per ack wait: p50 and max over runs of the first and of the last of the victim's tasks to
complete, and how many of them ended in error.

Outage (`--outage`): one long circuit (~10-15 s) runs on a worker while, for `--outage-factor`
x ack wait (default 2), nats-server is stopped (SIGTERM or SIGKILL, then started on the same
data) or the worker is stalled (SIGSTOP/SIGCONT: what NATS sees of a network partition).
Reports whether the circuit was delivered again (attempts), how many runs of it finished
(`task_finished` lines in the worker logs, by outcome), and when it completed. `--ack-wait`
omitted: qtask's default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask.config import NatsSettings
from qtask_testkit import free_port, slow_circuit
from servers import DistributedDeployment, RoleProcess

SHORT = slow_circuit(18, 10)  # ~0.2 s alone on one core; 18 qubits: never batched
LONG = slow_circuit(23, 14)  # ~10-15 s on one core


def _hash(client: redis.Redis, task_id: str) -> dict[str, str]:
    raw = client.hgetall(f"qtask:task:{task_id}")
    return {bytes(k).decode(): bytes(v).decode() for k, v in raw.items()}


def _wait_ready(worker: RoleProcess, timeout: float = 60.0) -> None:
    url = f"http://127.0.0.1:{worker.env['QTASK_WORKER__HEALTH_PORT']}/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if not worker.alive():
            raise RuntimeError(f"worker exited:\n{worker.log()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError("worker not ready")


def _replace(d: DistributedDeployment, index: int, tag: str) -> None:
    old = d.workers[index]
    new = RoleProcess(
        "worker",
        old.args,
        {**d.env, "QTASK_WORKER__HEALTH_PORT": str(free_port())},
        d.dir / f"worker-{index}-{tag}.log",
    )
    new.start()
    d.workers[index] = new
    _wait_ready(new)


def _submit(http: httpx.Client, source: str) -> str:
    response = http.post("/tasks", json={"qc": source, "shots": 100})
    response.raise_for_status()
    return str(response.json()["task_id"])


def _worker_runs(d: DistributedDeployment, task_id: str, logs: list[Path]) -> dict[str, int]:
    """`task_finished` lines for the task, by outcome, over every worker log of the run."""
    found: dict[str, int] = {}
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if task_id in line and '"task_finished"' in line:
                with contextlib.suppress(ValueError):
                    outcome = json.loads(line).get("outcome", "?")
                    found[outcome] = found.get(outcome, 0) + 1
    return found


def kill_runs(ack_wait: float | None, runs: int, tasks: int) -> list[dict[str, float]]:
    """SIGKILL a worker holding short tasks `runs` times; per run, the recovery figures."""
    root = Path(tempfile.mkdtemp(prefix="qtask-recovery-"))
    d = DistributedDeployment(root / "d", workers=2, processes=1, ack_wait_s=ack_wait)
    d.start()
    for worker in d.workers:
        _wait_ready(worker)
    rows: list[dict[str, float]] = []
    client = redis.Redis.from_url(d.redis.url)
    try:
        with httpx.Client(base_url=d.url, timeout=30) as http:
            for run in range(runs):
                ids = [_submit(http, SHORT) for _ in range(tasks)]
                victim_index = run % 2
                victim = d.workers[victim_index]
                assert victim.process is not None
                victim_id = f"{socket.gethostname()}-{victim.process.pid}"
                held: list[str] = []
                deadline = time.monotonic() + 30
                while not held and time.monotonic() < deadline:
                    held = [
                        t
                        for t in ids
                        if (h := _hash(client, t)).get("worker") == victim_id
                        and h.get("status") == "running"
                    ]
                    if not held:
                        time.sleep(0.01)
                if not held:  # the other worker took them all: try again
                    print(f"run {run}: victim held nothing; skipped", file=sys.stderr)
                    continue
                killed = time.time()
                victim.kill()
                done: dict[str, dict[str, str]] = {}
                deadline = time.monotonic() + 120
                while len(done) < len(ids) and time.monotonic() < deadline:
                    for t in ids:
                        h = _hash(client, t)
                        if h.get("status") in ("completed", "failed"):
                            done[t] = h
                    time.sleep(0.05)
                after = sorted(float(done[t]["finished_at"]) - killed for t in held if t in done)
                rows.append(
                    {
                        "held": len(held),
                        "first": after[0] if after else float("nan"),
                        "last": after[-1] if len(after) == len(held) else float("nan"),
                        "failed": sum(done[t]["status"] != "completed" for t in held if t in done),
                    }
                )
                print(f"ack_wait {ack_wait}: run {run}: {rows[-1]}", file=sys.stderr)
                _replace(d, victim_index, f"r{run}")
    finally:
        client.close()
        d.terminate()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def outage_run(ack_wait: float | None, factor: float, fault: str) -> dict[str, object]:
    """Break NATS (or the worker's link to it) for factor x ack wait while a long circuit
    runs; was it run twice?

    `nats-term` / `nats-kill`: nats-server stopped with SIGTERM / SIGKILL, then started again.
    `stall`: the worker running the circuit is SIGSTOPped, then SIGCONTed, which is what NATS
    sees of a network partition between that worker and the server: no progress signals while
    the server itself keeps running its ack timers.
    """
    wait = ack_wait if ack_wait is not None else NatsSettings().ack_wait_s
    root = Path(tempfile.mkdtemp(prefix="qtask-outage-"))
    d = DistributedDeployment(root / "d", workers=2, processes=1, ack_wait_s=ack_wait)
    d.start()
    for worker in d.workers:
        _wait_ready(worker)
    client = redis.Redis.from_url(d.redis.url)
    try:
        with httpx.Client(base_url=d.url, timeout=30) as http:
            task_id = _submit(http, LONG)
            deadline = time.monotonic() + 30
            while _hash(client, task_id).get("status") != "running":
                if time.monotonic() > deadline:
                    raise RuntimeError("the long task never started")
                time.sleep(0.02)
            time.sleep(1.0)
            stopped = time.time()
            if fault == "stall":
                holder = _hash(client, task_id)["worker"]
                role = next(w for w in d.workers if holder.endswith(f"-{_pid(w)}"))
                os.killpg(_pid(role), signal.SIGSTOP)
                time.sleep(factor * wait)
                os.killpg(_pid(role), signal.SIGCONT)
            else:
                d.nats.stop(signal.SIGTERM if fault == "nats-term" else signal.SIGKILL)
                time.sleep(factor * wait)
                d.nats.start()
            restarted = time.time()
            deadline = time.monotonic() + 180
            while _hash(client, task_id).get("status") not in ("completed", "failed"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the long task never ended")
                time.sleep(0.1)
            time.sleep(wait + 20)  # a second run, if any, finishes (and is logged) by now
            record = _hash(client, task_id)
            logs = sorted(d.dir.glob("worker-*.log"))
            return {
                "fault": fault,
                "ack_wait": wait,
                "outage_s": round(restarted - stopped, 1),
                "attempts": int(record.get("attempts", 0)),
                "runs_finished": _worker_runs(d, task_id, logs),
                "status": record.get("status"),
                "done_after_restart_s": round(float(record["finished_at"]) - restarted, 1),
            }
    finally:
        client.close()
        d.terminate()
        shutil.rmtree(root, ignore_errors=True)


def _pid(role: RoleProcess) -> int:
    assert role.process is not None
    return role.process.pid


def _fmt(values: list[float]) -> str:
    clean = [v for v in values if v == v]
    if not clean:
        return "-"
    return f"{statistics.median(clean):.1f} / {max(clean):.1f}"


def main() -> None:
    """Run the measurements and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ack-wait", type=float, action="append", help="seconds (repeatable)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=4, help="short tasks submitted per run")
    parser.add_argument("--outage", action="store_true", help="also measure a NATS outage")
    parser.add_argument("--outage-factor", type=float, default=2.0)
    parser.add_argument(
        "--outage-fault", action="append", choices=["nats-term", "nats-kill", "stall"]
    )
    parser.add_argument("--no-kill", action="store_true", help="skip the worker-kill runs")
    args = parser.parse_args()
    waits: list[float | None] = list(args.ack_wait) if args.ack_wait else [None]
    default = NatsSettings().ack_wait_s

    if not args.no_kill:
        print(f"\n## Worker SIGKILL -> completion of its tasks ({args.runs} runs, 2 workers)\n")
        print("| ack wait s | tasks held by the victim | first done s p50 / max "
              "| last done s p50 / max | failed |")  # fmt: skip
        print("|---|---|---|---|---|")
        for wait in waits:
            rows = kill_runs(wait, args.runs, args.tasks)
            label = f"{wait:g}" if wait is not None else f"{default:g} (default)"
            held = "/".join(str(int(r["held"])) for r in rows)
            failed = int(sum(r["failed"] for r in rows))
            first = _fmt([r["first"] for r in rows])
            last = _fmt([r["last"] for r in rows])
            print(f"| {label} | {held} | {first} | {last} | {failed} |", flush=True)

    if args.outage:
        factor = args.outage_factor
        print(f"\n## NATS away for {factor:g} x ack wait while a ~10-15 s circuit runs\n")
        print("| fault | ack wait s | outage s | attempts | runs finished (task_finished lines) "
              "| status | completed s after the outage ended |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for fault in args.outage_fault or ["nats-term", "nats-kill", "stall"]:
            for wait in waits:
                r = outage_run(wait, factor, fault)
                print(
                    f"| {fault} | {r['ack_wait']:g} | {r['outage_s']} | {r['attempts']} "
                    f"| {r['runs_finished']} | {r['status']} | {r['done_after_restart_s']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
