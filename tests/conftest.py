"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from qtask_testkit import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `qtask serve` shared by the tests of one module."""
    process = ServerProcess(tmp_path_factory.mktemp("serve") / "data")
    process.start()
    yield process
    process.terminate()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client for the module's server."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
