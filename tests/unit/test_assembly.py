"""Process assembly (qtask.assembly): what a process refuses to start with; what it builds once."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtask.assembly.embedded import EmbeddedService, serve
from qtask.config import Settings
from qtask.errors import ConfigError
from qtask.execution import catalog as catalog_module
from qtask.execution.catalog import BackendCatalog, build_catalog


def test_serve_refuses_a_distributed_store_and_names_the_roles_to_run() -> None:
    settings = Settings(storage={"store": "redis", "queue": "nats"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="run qtask api and qtask worker"):
        serve(settings)


def test_serve_builds_the_backend_catalog_once_so_each_remote_backend_has_one_provider_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each build makes its own remote backend objects, and each starts its own provider child
    # (176-286 MiB for IBM or Braket) on first use: the API, the worker and the poller of one
    # process must share one.
    built: list[BackendCatalog] = []

    def counting(settings: Settings) -> BackendCatalog:
        built.append(build_catalog(settings))
        return built[-1]

    monkeypatch.setattr(catalog_module, "build_catalog", counting)
    settings = Settings(
        storage={"data_dir": tmp_path},  # type: ignore[arg-type]
        backends={"far": {"type": "qtask", "url": "https://far.example"}},  # type: ignore[arg-type]
    )
    embedded = EmbeddedService(settings)

    assert len(built) == 1
    far = built[0].get("far")
    assert embedded.service.backends().get("far") is far
    assert embedded.worker._remote is not None
    assert embedded.worker._remote._backends["far"] is far
    assert embedded.poller is not None
    assert embedded.poller._backends["far"] is far
