"""Fixtures shared by every test layer."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qtask_testkit import ServerProcess
from servers import DistributedDeployment, NatsServer, RedisServer, S3Server, started_deployment


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess | DistributedDeployment]:
    """The whole service, shared by the tests of one module: `qtask serve`, or `qtask api`
    with two `qtask worker`s and a poller on real Redis, NATS and S3 servers."""
    yield from started_deployment(request.param, tmp_path_factory)


@pytest.fixture
def client(server: ServerProcess | DistributedDeployment) -> Iterator[httpx.Client]:
    """An HTTP client for the module's server."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server (AOF on) for one test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream for one test."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    """A fresh S3 server (rclone) with the test bucket, for one test."""
    server = S3Server(tmp_path / "s3")
    server.start()
    yield server
    server.stop(signal.SIGKILL)
