"""Real servers for integration and chaos tests: redis-server, nats-server (JetStream) and an S3
server (`rclone serve s3`), each on a free port with its data in a directory of the test's own.

Each can be stopped (SIGTERM or SIGKILL) and started again on the same port and data, which is
what the chaos tests do. Under CI a missing binary is an error, not a skip: scripts/bootstrap
installs them.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from qtask_testkit import free_port

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


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server not listening on {port} after {timeout} s")


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
        _wait_port(self.port, self.process, self.log_path, timeout)

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
        ]  # fmt: skip
