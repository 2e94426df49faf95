"""Helpers for mesh tests: start `qtask node` (or tests/mesh_peer.py) processes on free ports
and read back their peer id and multiaddrs; an in-test `MeshHost` client.

A process is ready when it logs `mesh_host_started` (JSON, with `peer_id` and `addrs`); each
runs in its own process group so a SIGKILL takes it whole. The coordinator's tests reuse this.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from qtask.mesh.experiment.cluster import LOOPBACK, json_lines, spawn, toml_value
from qtask.mesh.host import MeshHost
from qtask_testkit import kill_group, terminate_group

TESTS = Path(__file__).resolve().parent


class MeshProcess:
    """One mesh process (a node, or the bare test peer) whose log is a file of JSON lines."""

    def __init__(
        self,
        command: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        ready_event: str = "mesh_host_started",
    ):
        self.command = list(command)
        self.ready_event = ready_event
        self.log_path = log
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.peer_id = ""
        self.addrs: tuple[str, ...] = ()
        self.ready: dict[str, Any] = {}
        self._offset = 0

    @property
    def addr(self) -> str:
        """The first full multiaddr (/p2p/<peer id> included)."""
        return self.addrs[0]

    def start(self, timeout: float = 60.0) -> MeshProcess:
        """Start it; wait for its ready line (`mesh_host_started`; a node: `mesh_node_ready`)."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting (see `start_all`)."""
        # A restarted process appends to the same log: read only what this run writes.
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = spawn(self.command, self.log_path, self.env)

    def wait_ready(self, timeout: float = 60.0) -> MeshProcess:
        """Wait for the ready line; read the peer id and addresses from it."""
        started = self.wait_for(self.ready_event, timeout=timeout)
        self.ready = started
        self.peer_id, self.addrs = started["peer_id"], tuple(started["addrs"])
        return self

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (other lines skipped)."""
        return json_lines(self.log())

    def wait_for(
        self,
        event: str,
        *,
        timeout: float = 30.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The first log line with this event (and `where` true), polled until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.lines():
                if entry.get("event") == event and (where is None or where(entry)):
                    return entry
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited before {event}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} in {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        if self.process is None:
            return
        kill_group(self.process)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL what is left."""
        if self.process is None:
            return None
        return terminate_group(self.process, f"mesh process {self.log_path.stem}", timeout)

    def log(self) -> str:
        """What this run of the process printed so far."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as file:
            file.seek(self._offset)
            return file.read().decode(errors="replace")


def node_process(directory: Path, name: str = "node", **node: Any) -> MeshProcess:
    """A `qtask node` with these [mesh.node] settings (noise as a dict), not yet started.

    Defaults for tests: loopback on a free port, adverts every 0.5 s, 400 calibration shots,
    its identity in `directory`. Its log is `directory/<name>.log`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "listen": LOOPBACK,
        "advert_interval_s": 0.5,
        "calibration_shots": 400,
        "identity_file": str(directory / f"{name}.key"),
        **node,
    }
    config = directory / f"{name}.toml"
    lines = ["[log]", 'level = "INFO"', "json_output = true", "", "[mesh.node]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in settings.items()]
    config.write_text("\n".join(lines) + "\n")
    return MeshProcess(
        [sys.executable, "-m", "qtask", "node", "--config", str(config)],
        directory / f"{name}.log",
        ready_event="mesh_node_ready",
    )


def start_all(processes: Sequence[MeshProcess], timeout: float = 120.0) -> list[MeshProcess]:
    """Launch every process at once (their imports overlap), then wait for each to be ready.

    E.g. three nodes joined through the first:
        first = node_process(d, "n0").start()
        rest = start_all([node_process(d, f"n{i}", bootstrap=[first.addr]) for i in (1, 2)])
    """
    for process in processes:
        process.launch()
    try:
        return [process.wait_ready(timeout) for process in processes]
    except BaseException:
        for process in processes:
            process.terminate(timeout=5)
        raise


def peer_process(log: Path, *args: str) -> MeshProcess:
    """The bare MeshHost of tests/mesh_peer.py (echo, hang, fake adverts), not yet started."""
    return MeshProcess([sys.executable, str(TESTS / "mesh_peer.py"), *args], log)


@contextlib.asynccontextmanager
async def mesh_client(
    *,
    topics: dict[str, Callable[[str, bytes], Any]] | None = None,
    on_peer: Callable[[str, bool], None] | None = None,
    bootstrap: Sequence[str] = (),
) -> AsyncIterator[MeshHost]:
    """An in-test MeshHost subscribed to `topics`, started, and stopped at the end."""
    host = MeshHost(listen=LOOPBACK, bootstrap=bootstrap)
    for topic, handler in (topics or {}).items():
        host.subscribe(topic, handler)
    if on_peer is not None:
        host.on_peer(on_peer)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


async def poll(check: Callable[[], Any], *, timeout: float, interval: float = 0.02) -> Any:
    """`check()`'s first truthy value, polled until `timeout` (then AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        await asyncio.sleep(interval)
