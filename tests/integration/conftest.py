"""Fixtures of the integration layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qtask.adapters.redis_store import RedisTaskStore
from qtask.adapters.sqlite_store import SQLiteTaskStore
from qtask.domain.ports import TaskStore
from qtask.testing import InMemoryTaskStore
from servers import RedisServer


@pytest.fixture(params=["sqlite", "redis", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskStore]:
    """Each TaskStore in turn: SQLite in a temp dir, Redis on a fresh server, in-memory."""
    opened: TaskStore
    if request.param == "sqlite":
        opened = SQLiteTaskStore(tmp_path / "t.db")
    elif request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        opened = RedisTaskStore(server.url)
    else:
        opened = InMemoryTaskStore()
    yield opened
    await opened.close()
