"""`qtask coordinator` refuses a bad configuration before it starts anything (FR-011)."""

from __future__ import annotations

import pytest

from qtask.cli import main


def test_an_invalid_coordinator_setting_fails_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QTASK_MESH__COORDINATOR__ADVERT_TTL_S", "-1")
    assert main(["coordinator"]) == 2
    error = capsys.readouterr().err
    assert "mesh.coordinator.advert_ttl_s (env QTASK_MESH__COORDINATOR__ADVERT_TTL_S)" in error
    assert "greater than 0" in error
