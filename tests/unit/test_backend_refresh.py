"""The periodic re-read of remote backends' capabilities (qtask.execution.refresh), on
httpx.MockTransport standing in for a remote qtask."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog.testing

from qtask.assembly.wiring import _refreshing
from qtask.config import LimitsSettings
from qtask.config_backends import QtaskBackendSettings
from qtask.execution.refresh import CapabilityRefresher
from qtask.execution.remote_qtask import QtaskRemoteBackend


class RemoteQtask:
    """Answers GET /backends with the current `max_shots`, or refuses connections (`down`)."""

    def __init__(self) -> None:
        self.max_shots = 1000
        self.down = False
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        body: dict[str, Any] = {
            "default": "aer",
            "backends": [
                {
                    "name": "aer",
                    "max_qubits": {"statevector": 28},
                    "max_shots": self.max_shots,
                    "num_qubits": None,
                    "memory": True,
                    "seeds": True,
                }
            ],
        }
        return httpx.Response(200, json=body)


def remote(answers: RemoteQtask) -> QtaskRemoteBackend:
    settings = QtaskBackendSettings(type="qtask", url="http://b.example")  # type: ignore[call-arg]
    return QtaskRemoteBackend(
        "remote", settings, LimitsSettings(), transport=httpx.MockTransport(answers)
    )


async def test_each_pass_rereads_the_capabilities_and_logs_health_changes() -> None:
    answers = RemoteQtask()
    backend = remote(answers)
    refresher = CapabilityRefresher([backend], interval=60.0)
    with structlog.testing.capture_logs() as logs:
        assert await refresher.run_once() == {"remote": "ok"}
        assert backend.capabilities.max_shots == 1000
        answers.max_shots = 50
        await refresher.run_once()
        assert backend.capabilities.max_shots == 50  # no GET /backends was asked here
        answers.down = True
        health = (await refresher.run_once())["remote"]
        assert "cannot be reached" in health
        assert backend.capabilities.max_shots == 50  # the last capabilities read stay
        await refresher.run_once()
        answers.down = False
        assert await refresher.run_once() == {"remote": "ok"}
    events = [(e["event"], e["backend"]) for e in logs if e["event"].startswith("backend_")]
    assert events == [
        ("backend_reachable", "remote"),
        ("backend_unreachable", "remote"),  # once, not on every pass while it is away
        ("backend_reachable", "remote"),
    ]
    await backend.close()


async def test_the_api_lifespan_reads_the_capabilities_at_start_and_stops_with_it() -> None:
    answers = RemoteQtask()
    answers.max_shots = 77
    backend = remote(answers)
    entered = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        entered.set()
        yield

    async with _refreshing(lifespan, [backend])(None):  # type: ignore[arg-type]
        assert entered.is_set()
        deadline = time.monotonic() + 5
        while backend.capabilities.max_shots != 77:
            assert time.monotonic() < deadline, "capabilities not read at start"
            await asyncio.sleep(0.01)
    calls = answers.calls
    await asyncio.sleep(0.05)
    assert answers.calls == calls  # stopped with the lifespan
    await backend.close()
