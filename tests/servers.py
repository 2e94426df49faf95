"""Real servers for integration and chaos tests: redis-server, nats-server (JetStream) and an S3
server (`rclone serve s3`), each on a free port with its data in a directory of the test's own.

Each can be stopped (SIGTERM or SIGKILL) and started again on the same port and data, which is
what the chaos tests do. Under CI a missing binary is an error, not a skip: scripts/bootstrap
installs them.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtask_testkit import (
    ServerProcess,
    free_port,
    kill_group,
    remote_env,
    terminate_group,
    wait_listening,
    wait_ready,
)

S3_ACCESS_KEY = "qtask-test-access"
S3_SECRET_KEY = "qtask-test-secret-key"
S3_BUCKET = "qtask"


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        venv_bin = Path(sys.executable).parent / name
        if venv_bin.exists():
            return str(venv_bin)
        raise RuntimeError(f"{name} is not installed; run scripts/bootstrap")
    return found


class _Server:
    """A server process on a fixed port that can be killed and started again."""

    name = "server"

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = directory / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until its port accepts connections."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
            )
        wait_listening(
            self.port, self.process, self.name,
            lambda: self.log_path.read_text(errors="replace"), timeout,
        )  # fmt: skip

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Stop the server with `sig` and wait for it to exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop with `sig`, then start again on the same port and data."""
        self.stop(sig)
        self.start()


class RedisServer(_Server):
    """redis-server with AOF on (as in compose), so acknowledged writes survive a restart."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            _binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--protected-mode", "no",
        ]  # fmt: skip


class NatsServer(_Server):
    """nats-server with JetStream storing on disk in the test's directory."""

    name = "nats"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            _binary("nats-server"), "-js", "-sd", str(self.dir / "jetstream"),
            "-a", "127.0.0.1", "-p", str(self.port),
        ]  # fmt: skip


class S3Server(_Server):
    """`rclone serve s3` over a local directory; buckets are its top-level folders."""

    name = "s3"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        (self.dir / "data" / S3_BUCKET).mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS_* variables a client needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def command(self) -> list[str]:
        return [
            _binary("rclone"), "serve", "s3", str(self.dir / "data"),
            "--addr", f"127.0.0.1:{self.port}",
            "--auth-key", f"{S3_ACCESS_KEY},{S3_SECRET_KEY}",
            "--config", "/dev/null",
            # rclone's directory cache can keep a stale entry after simultaneous uploads into
            # one folder, failing GETs of that key until the cache expires (5 min by
            # default); a short expiry heals it within the client's retry window.
            "--dir-cache-time", "1s",
        ]  # fmt: skip


class RoleProcess:
    """One `qtask <role>` process in its own process group, killable as a whole."""

    def __init__(self, role: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.role = role
        self.args = args
        self.env = env
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (without waiting for it to be ready)."""
        import os

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qtask", self.role, *self.args],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                start_new_session=True,
            )  # fmt: skip

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and its children."""
        if self.process is None:
            return
        kill_group(self.process)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then make sure nothing of it is left."""
        if self.process is None:
            return None
        return terminate_group(self.process, f"qtask {self.role}", timeout)

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until this process serves /ready with 200 on its own health port."""
        assert self.process is not None, f"qtask {self.role} was not started"
        port = self.env[f"QTASK_{self.role.upper()}__HEALTH_PORT"]
        wait_ready(f"http://127.0.0.1:{port}", self.process, f"qtask {self.role}", self.log,
                   timeout)  # fmt: skip


class DistributedDeployment:
    """Redis, NATS and S3 servers with `qtask api`, N `qtask worker`s and a `qtask poller`.

    Offers what the tests use of ServerProcess: `url`, `start()`, `terminate()`,
    `task_count()`, `log()`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        workers: int = 2,
        processes: int = 1,
        env: dict[str, str] | None = None,
        ack_wait_s: float | None = 3.0,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(directory / "redis")
        self.nats = NatsServer(directory / "nats")
        self.s3 = S3Server(directory / "s3")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.processes = processes
        self.api: RoleProcess | None = None
        self.workers: list[RoleProcess] = []
        self.poller: RoleProcess | None = None
        self.worker_count = workers
        # The tests shorten NATS's ack wait to 3 s; None keeps qtask's default (what a user gets).
        self.ack_wait_s = ack_wait_s

    @property
    def env(self) -> dict[str, str]:
        """The configuration every role gets."""
        ack_wait = (
            {} if self.ack_wait_s is None else {"QTASK_NATS__ACK_WAIT_S": f"{self.ack_wait_s:g}"}
        )
        return {
            "QTASK_STORAGE__STORE": "redis",
            "QTASK_STORAGE__QUEUE": "nats",
            "QTASK_STORAGE__OBJECTS_URL": f"s3://{S3_BUCKET}",
            "QTASK_REDIS__URL": self.redis.url,
            "QTASK_NATS__URL": self.nats.url,
            **ack_wait,
            "QTASK_NATS__RECONCILE_INTERVAL_S": "0.5",
            "QTASK_LOG__JSON_OUTPUT": "true",
            **self.s3.env,
            **self.extra_env,
        }

    def start(self, timeout: float = 60.0) -> None:
        """Start the servers (if not running) and every role; wait until the API is ready."""
        for server in (self.redis, self.nats, self.s3):
            if server.process is None or server.process.poll() is not None:
                server.start()
        self.start_api()
        while len(self.workers) < self.worker_count:
            self.add_worker()
        if self.poller is None or not self.poller.alive():
            self.poller = RoleProcess(
                "poller", [], {**self.env, "QTASK_WORKER__HEALTH_PORT": str(free_port())},
                self.dir / "poller.log",
            )  # fmt: skip
            self.poller.start()
        self.wait_ready(timeout)

    def start_api(self, env: dict[str, str] | None = None) -> None:
        """Start (or restart) the API process."""
        if self.api is not None and self.api.alive():
            self.api.terminate()
        self.api = RoleProcess(
            "api", ["--port", str(self.port)], {**self.env, **(env or {})}, self.dir / "api.log"
        )
        self.api.start()

    def add_worker(self) -> RoleProcess:
        """Start one more worker."""
        index = len(self.workers)
        worker = RoleProcess(
            "worker",
            ["--workers", str(self.processes)],
            {**self.env, "QTASK_WORKER__HEALTH_PORT": str(free_port())},
            self.dir / f"worker-{index}.log",
        )
        worker.start()
        self.workers.append(worker)
        return worker

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the API's /ready answers 200."""
        assert self.api is not None
        assert self.api.process is not None
        wait_ready(self.url, self.api.process, "qtask api", self.log, timeout)

    def worker_running(self, task_id: str, timeout: float = 30.0) -> RoleProcess:
        """The worker that runs the task, as soon as the store says one does."""
        import redis

        by_id = {f"{socket.gethostname()}-{w.process.pid}": w for w in self.workers if w.process}
        client = redis.Redis.from_url(self.redis.url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                status, worker = client.hmget(f"qtask:task:{task_id}", "status", "worker")
                if status == b"running" and worker is not None:
                    return by_id[bytes(worker).decode()]
                time.sleep(0.01)
        finally:
            client.close()
        raise AssertionError(f"task {task_id} never started running")

    def terminate(self, timeout: float = 30.0) -> None:
        """Stop every role, then the servers."""
        for role in [self.api, self.poller, *self.workers]:
            if role is not None:
                role.terminate(timeout)
        for server in (self.redis, self.nats, self.s3):
            server.stop(signal.SIGKILL)

    def stored_status(self, task_id: str) -> str | None:
        """The task's status as Redis holds it (queued/running/...), None when absent."""
        import redis

        client = redis.Redis.from_url(self.redis.url)
        try:
            status = client.hget(f"qtask:task:{task_id}", "status")
        finally:
            client.close()
        return None if status is None else bytes(status).decode()

    def task_count(self) -> int:
        """How many task records Redis holds."""
        import redis

        client = redis.Redis.from_url(self.redis.url)
        try:
            return sum(1 for _ in client.scan_iter(match="qtask:task:*", count=1000))
        finally:
            client.close()

    def log(self) -> str:
        """Every role's output, labelled."""
        roles = [self.api, self.poller, *self.workers]
        return "\n".join(f"--- {r.role}\n{r.log()}" for r in roles if r is not None)


def started_deployment(
    kind: str, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str] | None = None
) -> Iterator[ServerProcess | DistributedDeployment]:
    """Start the whole service of `kind` ("embedded": `qtask serve`; "distributed": api, two
    workers and a poller on real Redis, NATS and S3) with `env`, yield it, then stop it. For
    module fixtures parametrized over both deployments."""
    deployment: ServerProcess | DistributedDeployment
    if kind == "embedded":
        deployment = ServerProcess(tmp_path_factory.mktemp("serve") / "data", env=env)
    else:
        deployment = DistributedDeployment(tmp_path_factory.mktemp("distributed"), env=env)
    deployment.start()
    yield deployment
    deployment.terminate()


Front = ServerProcess | DistributedDeployment


def federated_pair(
    kind: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, **remote: str
) -> Iterator[tuple[Front, ServerProcess]]:
    """B: `qtask serve` with one worker process; A: the deployment of `kind` (see
    `started_deployment`) with a `qtask` backend "remote" on B (`remote`: its options). Yields
    (A, B), then stops both. For fixtures parametrized over both deployments."""
    b = ServerProcess(tmp_path / "b", workers=1)
    b.start()
    try:
        env = remote_env(b.url, **remote)
        yield from ((a, b) for a in started_deployment(kind, tmp_path_factory, env))
    finally:
        if b.process is not None:
            b.terminate()


def started_api_replica(deployment: DistributedDeployment, log: Path) -> tuple[RoleProcess, str]:
    """Start one more `qtask api` on the deployment's Redis, NATS and S3, wait until it is ready,
    and return it with its URL (tests of what reaches a client on another replica)."""
    port = free_port()
    replica = RoleProcess("api", ["--port", str(port)], {**deployment.env}, log)
    replica.start()
    url = f"http://127.0.0.1:{port}"
    assert replica.process is not None
    wait_ready(url, replica.process, "qtask api replica", replica.log)
    return replica, url
