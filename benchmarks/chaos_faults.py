"""The chaos soak's faults: a seeded schedule, and a thread that inflicts it on a
tests/servers.DistributedDeployment.

Fault types (every schedule has each at least once):
- `worker_kill`: SIGKILL one worker's process group every few seconds; a fresh worker (its own
  log file) starts 0.5-3 s later.
- `worker_stall`: SIGSTOP one worker's process group, SIGCONT it later; the first stall is
  longer than the NATS ack wait, so its tasks are delivered to another worker meanwhile.
- `nats`, `redis`, `s3`: stop the server (SIGKILL or SIGTERM), start it again on the same port
  and data after a pause.
- `api`, `poller`: SIGKILL the role, start it again after a pause.
- `stream_delete`: delete the JetStream stream through the NATS API (nats-py), once, after
  pausing every worker for 2 s so that the stream holds a backlog when it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import free_port
from servers import DistributedDeployment, RoleProcess

# How often the fault thread looks for role processes that exited by themselves.
SUPERVISE_S = 1.0

# Before deleting the stream every worker is paused this long, so a backlog is deleted with it.
STREAM_DELETE_BACKLOG_S = 2.0

FAULT_TYPES = (
    "worker_kill", "worker_stall", "nats", "redis", "s3", "api", "poller", "stream_delete",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Fault:
    """One scheduled fault: at `at` s into the run, against `target`, undone `down_s` later."""

    at: float
    kind: str
    target: str
    down_s: float
    sig: str = "SIGKILL"

    def describe(self) -> str:
        """One line of the printed schedule."""
        return f"{self.at:7.1f} s  {self.what()}"

    def what(self) -> str:
        """The fault without its time."""
        undo = f", back after {self.down_s:.1f} s" if self.down_s else ""
        return f"{self.kind:<13} {self.target:<9} {self.sig}{undo}"


def make_schedule(
    seed: int, duration: float, workers: int, ack_wait: float, kinds: tuple[str, ...]
) -> list[Fault]:
    """The faults of one run, sorted by time; the same seed gives the same schedule."""
    rng = random.Random(f"faults-{seed}")
    faults: list[Fault] = []
    last = duration - 3.0  # nothing starts in the last seconds: the heal step undoes the rest
    if "worker_kill" in kinds:
        at = rng.uniform(2.0, 5.0)
        while at < last:
            target = f"worker-{rng.randrange(workers)}"
            faults.append(Fault(at, "worker_kill", target, rng.uniform(0.5, 3.0)))
            at += rng.uniform(3.0, 8.0)
    # Each other kind: once per started 120 s (at least once), at a random time in the middle
    # 80 % of the run; the stream is deleted once.
    rounds = max(1, int(duration // 120) + (duration % 120 > 0))
    for kind in kinds:
        if kind == "worker_kill":
            continue
        for n in range(1 if kind == "stream_delete" else rounds):
            at = rng.uniform(0.1 * duration, 0.8 * duration)
            if kind == "worker_stall":
                # The first stall outlives the ack wait: another worker takes its tasks.
                down = ack_wait * rng.uniform(1.3, 2.0) if n == 0 else rng.uniform(1.0, ack_wait)
                faults.append(Fault(at, kind, f"worker-{rng.randrange(workers)}", down, "SIGSTOP"))
            elif kind in ("nats", "redis", "s3"):
                sig = rng.choice(("SIGKILL", "SIGTERM"))
                faults.append(Fault(at, kind, kind, rng.uniform(1.0, 6.0), sig))
            elif kind in ("api", "poller"):
                faults.append(Fault(at, kind, kind, rng.uniform(0.0, 3.0)))
            else:
                faults.append(Fault(at, kind, "QTASK", 0.0, "API"))
    missing = set(kinds) - {f.kind for f in faults}
    if missing:
        raise ValueError(f"a {duration:g} s run is too short for {sorted(missing)}")
    return sorted(faults, key=lambda f: f.at)


@dataclass(slots=True)
class FaultLog:
    """What the fault thread did: (monotonic seconds into the run, text), and worker kills."""

    lines: list[tuple[float, str]] = field(default_factory=list)
    # (wall clock of the SIGKILL, worker id "hostname-pid") per killed worker incarnation.
    worker_kills: list[tuple[float, str]] = field(default_factory=list)
    stalls: list[tuple[float, float, str]] = field(default_factory=list)  # wall start, end, id
    errors: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)  # roles that exited by themselves


def worker_id(role: RoleProcess) -> str:
    """The id a worker records in the store and its logs (hostname-pid)."""
    import socket

    assert role.process is not None
    return f"{socket.gethostname()}-{role.process.pid}"


class FaultRunner:
    """Applies a schedule to a deployment from a background thread."""

    def __init__(self, d: DistributedDeployment, faults: list[Fault]) -> None:
        self.d = d
        self.faults = faults
        self.log = FaultLog()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-faults", daemon=True)
        self._started = 0.0
        self._incarnation = 0
        self._stalled: dict[int, tuple[float, str]] = {}  # pgid -> (SIGSTOP wall time, id)
        # Roles down on purpose ("worker-0", "api", "poller"); any other role process found
        # exited is restarted, as compose's `restart: unless-stopped` would (a role started
        # while NATS or Redis is down exits after its connect timeout).
        self._down: set[str] = set()

    def start(self) -> None:
        """Start applying the schedule (times are from now)."""
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop applying faults, then undo every fault still in force (the heal step)."""
        self._stop.set()
        self._thread.join()
        self.heal()

    def _note(self, text: str) -> None:
        self.log.lines.append((time.monotonic() - self._started, text))

    def _run(self) -> None:
        # (due, order, action): the scheduled faults and the restarts they queue.
        queue: list[tuple[float, int, Fault | str]] = []
        order = 0
        for fault in self.faults:
            heapq.heappush(queue, (fault.at, order, fault))
            order += 1
        while not self._stop.is_set():
            now = time.monotonic() - self._started
            if not queue or queue[0][0] > now:
                self._supervise()
                pause = min(SUPERVISE_S, queue[0][0] - now) if queue else SUPERVISE_S
                self._stop.wait(max(0.0, pause))
                continue
            _, _, item = heapq.heappop(queue)
            try:
                undo = self._apply(item) if isinstance(item, Fault) else self._undo(item)
            except Exception as exc:  # a fault that could not be applied: noted, run goes on
                self.log.errors.append(f"{item}: {type(exc).__name__}: {exc}")
                self._note(f"error {item}: {exc}")
                continue
            if undo is not None:
                again, then = undo
                now = time.monotonic() - self._started
                heapq.heappush(queue, (now + again, order, then))
                order += 1

    def _apply(self, fault: Fault) -> tuple[float, Fault | str] | None:
        """Inflict the fault; what to do next (undo it, or try it again) and in how long."""
        d = self.d
        kind = fault.kind
        if kind == "stream_delete":
            # With the workers paused first, the stream holds a backlog when it goes: the
            # messages of tasks stored as queued that no worker has seen yet.
            self._note(f"stream_delete: pausing every worker {STREAM_DELETE_BACKLOG_S:g} s first")
            paused = self._pause_workers(STREAM_DELETE_BACKLOG_S)
            deleted = _delete_stream(d.nats.url, fault.target)
            self._resume(paused)
            if not deleted:
                self._note("stream_delete: NATS unreachable, retrying in 2 s")
                return 2.0, fault
            self._count(kind)
            self._note(f"stream {fault.target} deleted (workers paused {len(paused)})")
            return None
        if kind in ("worker_kill", "worker_stall") and not d.workers[_index(fault)].alive():
            if kind == "worker_kill":  # the next kill comes in a few seconds anyway
                self._note(f"{fault.what()}: skipped, that worker is down")
                return None
            self._note(f"{fault.what()}: that worker is down, retrying in 1 s")
            return 1.0, fault
        self._count(kind)
        who = f" ({worker_id(d.workers[_index(fault)])})" if kind.startswith("worker") else ""
        self._note(fault.what() + who)
        if kind == "worker_kill":
            index = _index(fault)
            role = d.workers[index]
            self.log.worker_kills.append((time.time(), worker_id(role)))
            self._down.add(fault.target)
            role.kill()
            return fault.down_s, f"worker_start {index}"
        if kind == "worker_stall":
            role = d.workers[_index(fault)]
            assert role.process is not None
            os.killpg(role.process.pid, signal.SIGSTOP)
            self._stalled[role.process.pid] = (time.time(), worker_id(role))
            return fault.down_s, f"worker_cont {role.process.pid} {worker_id(role)}"
        if kind in ("nats", "redis", "s3"):
            getattr(d, kind).stop(signal.Signals[fault.sig])
            return fault.down_s, f"{kind}_start"
        if kind == "api":
            assert d.api is not None
            self._down.add("api")
            d.api.kill()
            return fault.down_s, "api_start"
        if kind == "poller":
            assert d.poller is not None
            self._down.add("poller")
            d.poller.kill()
            return fault.down_s, "poller_start"
        raise ValueError(f"unknown fault {kind}")

    def _undo(self, action: str) -> tuple[float, Fault | str] | None:
        d = self.d
        verb, *args = action.split()
        if verb == "worker_start":
            self._down.discard(f"worker-{args[0]}")
            self._start_worker(int(args[0]))
            self._note(f"{action} ({worker_id(d.workers[int(args[0])])})")
            return None
        self._note(action)
        if verb == "worker_cont":
            pgid = int(args[0])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGCONT)
            stalled = self._stalled.pop(pgid, None)
            if stalled is not None:
                self.log.stalls.append((stalled[0], time.time(), stalled[1]))
        elif verb in ("nats_start", "redis_start", "s3_start"):
            getattr(d, verb.removesuffix("_start")).start()
        elif verb == "api_start":
            self._down.discard("api")
            d.start_api()
        elif verb == "poller_start":
            self._down.discard("poller")
            self._start_poller()
        return None

    def _supervise(self) -> None:
        """Restart every role process that exited without being killed on purpose."""
        d = self.d
        roles = [(f"worker-{i}", w) for i, w in enumerate(d.workers)]
        roles += [("api", d.api), ("poller", d.poller)]
        for name, role in roles:
            if name in self._down or role is None or role.process is None or role.alive():
                continue
            code = role.process.returncode
            self.log.exits[f"{name} exit {code}"] = self.log.exits.get(f"{name} exit {code}", 0) + 1
            self._note(f"{name} exited by itself (code {code}): restarted")
            if name == "api":
                d.start_api()
            elif name == "poller":
                self._start_poller()
            else:
                self._start_worker(int(name.split("-")[1]))

    def _pause_workers(self, seconds: float) -> list[int]:
        """SIGSTOP every live worker not already stalled, for `seconds`; their pgids."""
        paused = []
        for role in self.d.workers:
            if role.alive() and role.process is not None and role.process.pid not in self._stalled:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(role.process.pid, signal.SIGSTOP)
                    paused.append(role.process.pid)
        time.sleep(seconds)
        return paused

    def _resume(self, pgids: list[int]) -> None:
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGCONT)

    def _count(self, kind: str) -> None:
        self.log.counts[kind] = self.log.counts.get(kind, 0) + 1

    def _start_worker(self, index: int) -> None:
        d = self.d
        if d.workers[index].alive():
            return
        self._incarnation += 1
        role = RoleProcess(
            "worker",
            ["--workers", str(d.processes)],
            {**d.env, "QTASK_WORKER__HEALTH_PORT": str(free_port())},
            d.dir / f"worker-{index}-{self._incarnation}.log",
        )
        role.start()
        d.workers[index] = role

    def _start_poller(self) -> None:
        d = self.d
        if d.poller is not None and d.poller.alive():
            return
        d.poller = RoleProcess(
            "poller",
            [],
            {**d.env, "QTASK_WORKER__HEALTH_PORT": str(free_port())},
            d.dir / f"poller-{self._incarnation}.log",
        )
        d.poller.start()

    def heal(self) -> None:
        """Undo whatever is still broken: continue stalled workers, start what is down."""
        d = self.d
        for pgid, (began, who) in list(self._stalled.items()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGCONT)
            self.log.stalls.append((began, time.time(), who))
        self._stalled.clear()
        for server in (d.redis, d.nats, d.s3):
            if server.process is None or server.process.poll() is not None:
                server.start()
        if d.api is None or not d.api.alive():
            d.start_api()
        self._start_poller()
        for index in range(len(d.workers)):
            self._start_worker(index)
        self._note("healed: every server and role running")


def _index(fault: Fault) -> int:
    return int(fault.target.split("-")[1])


def _delete_stream(url: str, stream: str) -> bool:
    """Delete the JetStream stream through the NATS API; False when NATS is unreachable."""
    import nats

    async def delete() -> None:
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
        try:
            await nc.jetstream(timeout=3).delete_stream(stream)
        finally:
            await nc.close()

    try:
        asyncio.run(asyncio.wait_for(delete(), 10))
    except Exception:
        return False
    return True
