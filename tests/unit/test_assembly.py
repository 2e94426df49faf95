"""Process assembly (qtask.assembly): what a process refuses to start with, before any I/O."""

from __future__ import annotations

import pytest

from qtask.assembly.embedded import serve
from qtask.config import Settings
from qtask.errors import ConfigError


def test_serve_refuses_a_distributed_store_and_names_the_roles_to_run() -> None:
    settings = Settings(storage={"store": "redis", "queue": "nats"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="run qtask api and qtask worker"):
        serve(settings)
