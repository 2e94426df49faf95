"""The two deployments under test, and what their processes use (memory and CPU, from /proc).

- `embedded`: one `qtask serve` (tests/qtask_testkit.ServerProcess) with 2 worker processes.
- `distributed`: redis-server, nats-server and rclone's S3 server with `qtask api`, 2 `qtask
  worker`s of 1 process each and a `qtask poller` (tests/servers.DistributedDeployment).

Each deployment names its processes by role: `front` (the HTTP API; in embedded mode also the
worker loop and SQLite writer in the same process), `workers` (the processes that run circuits;
in embedded mode every child of `qtask serve`, parser process included) and `infra` (Redis,
NATS and S3). A `ResourceSampler` thread reads each role's RSS, PSS and CPU time once a second.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import ServerProcess
from servers import DistributedDeployment

ROLES = ("front", "workers", "infra")
_TICKS = os.sysconf("SC_CLK_TCK")


def group_pids(pgid: int) -> list[int]:
    """Every pid in the process group (session) led by `pgid`."""
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _status_kib(pid: int, path: str, key: str) -> int:
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/{path}") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS of one process (0 if it is gone)."""
    return _status_kib(pid, "status", "VmRSS:")


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (fork copies, libraries) divided among sharers."""
    return _status_kib(pid, "smaps_rollup", "Pss:")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process (None if it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    return None


class Deployment(Protocol):
    """What run.py needs of a deployment."""

    name: str
    url: str
    root: Path  # every file of the deployment: data, logs

    def start(self) -> float:
        """Start everything; return seconds from starting qtask to every role ready."""
        ...

    def pids(self) -> dict[str, list[int]]:
        """The live pids of each role in ROLES."""
        ...

    def stop(self) -> None:
        """Stop every process this deployment started."""
        ...

    def infra_names(self) -> dict[int, str]:
        """The pid of each infrastructure server, to its name (redis, nats, s3)."""
        ...


class Embedded:
    """`qtask serve` with `workers` worker processes, in a temporary data directory."""

    name = "embedded"

    def __init__(self, root: Path, workers: int = 2) -> None:
        self.root = root
        self.server = ServerProcess(root / "data", workers=workers)
        self.url = self.server.url

    def start(self) -> float:
        started = time.perf_counter()
        self.server.start()  # returns once /ready answers 200
        return time.perf_counter() - started

    def pids(self) -> dict[str, list[int]]:
        assert self.server.process is not None
        leader = self.server.process.pid
        members = group_pids(leader)
        return {
            "front": [p for p in members if p == leader],
            "workers": [p for p in members if p != leader],
            "infra": [],
        }

    def stop(self) -> None:
        if self.server.process is not None:
            self.server.terminate()

    def infra_names(self) -> dict[int, str]:
        return {}


class Distributed:
    """Redis, NATS, S3, `qtask api`, `workers` × `qtask worker --workers 1` and a poller."""

    name = "distributed"

    def __init__(self, root: Path, workers: int = 2, objects: bool = True) -> None:
        self.root = root
        # Without objects: tasks and results live in Redis only, and the S3 server sits idle.
        env = {} if objects else {"QTASK_STORAGE__OBJECTS_URL": ""}
        self.deployment = DistributedDeployment(
            root / "distributed", workers=workers, processes=1, env=env
        )
        self.url = self.deployment.url

    def start(self) -> float:
        d = self.deployment
        for server in (d.redis, d.nats, d.s3):  # not part of qtask's own start-up time
            server.start()
        started = time.perf_counter()
        d.start()  # returns once the API's /ready answers 200
        deadline = time.monotonic() + 60
        for worker in d.workers:
            url = f"http://127.0.0.1:{worker.env['QTASK_WORKER__HEALTH_PORT']}/ready"
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline or not worker.alive():
                    raise RuntimeError(f"a worker did not become ready:\n{worker.log()[-3000:]}")
                time.sleep(0.05)
        return time.perf_counter() - started

    def pids(self) -> dict[str, list[int]]:
        d = self.deployment

        def roles(*procs: subprocess.Popen[bytes] | None) -> list[int]:
            return [p for proc in procs if proc is not None for p in group_pids(proc.pid)]

        api = d.api.process if d.api else None
        poller = d.poller.process if d.poller else None
        infra = [s.process.pid for s in (d.redis, d.nats, d.s3) if s.process is not None]
        return {
            "front": roles(api, poller),
            "workers": roles(*(w.process for w in d.workers)),
            "infra": infra,
        }

    def stop(self) -> None:
        self.deployment.terminate()

    def infra_names(self) -> dict[int, str]:
        d = self.deployment
        return {s.process.pid: s.name for s in (d.redis, d.nats, d.s3) if s.process is not None}


def make(name: str, workers: int = 2, objects: bool = True) -> Deployment:
    """A fresh, not yet started deployment in a new temporary directory."""
    root = Path(tempfile.mkdtemp(prefix=f"qtask-bench-{name}-"))
    if name == "embedded":
        return Embedded(root, workers)
    return Distributed(root, workers, objects)


@dataclass(slots=True)
class Usage:
    """Peak memory (MiB, summed over a role's processes) and CPU seconds used, by role."""

    peak_rss_mib: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))
    peak_pss_mib: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))
    # CPU seconds of each infrastructure server by name (redis, nats, s3): where `infra` goes.
    infra_cpu_s: dict[str, float] = field(default_factory=dict)

    def merge_peaks(self, other: Usage) -> None:
        """Keep the larger peak of each role."""
        for role in ROLES:
            self.peak_rss_mib[role] = max(self.peak_rss_mib[role], other.peak_rss_mib[role])
            self.peak_pss_mib[role] = max(self.peak_pss_mib[role], other.peak_pss_mib[role])


class ResourceSampler:
    """Samples a deployment's processes every `interval` seconds while in a `with` block."""

    def __init__(self, deployment: Deployment, interval: float = 1.0) -> None:
        self.deployment = deployment
        self.interval = interval
        self.usage = Usage()
        self._start_cpu: dict[int, float] = {}
        self._last_cpu: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ResourceSampler:
        self.sample()
        self._start_cpu = {pid: cpu for pid, (_, cpu) in self._last_cpu.items()}
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the state right after the workload
        for role in ROLES:
            self.usage.cpu_s[role] = sum(
                cpu - self._start_cpu.get(pid, 0.0)
                for pid, (r, cpu) in self._last_cpu.items()
                if r == role
            )
        for pid, name in self.deployment.infra_names().items():
            if pid in self._last_cpu:
                cpu = self._last_cpu[pid][1] - self._start_cpu.get(pid, 0.0)
                self.usage.infra_cpu_s[name] = self.usage.infra_cpu_s.get(name, 0.0) + cpu

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Read every role's memory and CPU time once."""
        for role, pids in self.deployment.pids().items():
            rss = pss = 0
            for pid in pids:
                rss += rss_kib(pid)
                pss += pss_kib(pid)
                cpu = cpu_seconds(pid)
                if cpu is not None:  # a process that exits keeps its last reading
                    self._last_cpu[pid] = (role, cpu)
            self.usage.peak_rss_mib[role] = max(self.usage.peak_rss_mib[role], rss / 1024)
            self.usage.peak_pss_mib[role] = max(self.usage.peak_pss_mib[role], pss / 1024)
