"""`qtask coordinator` refuses a bad configuration before it starts anything (FR-011); `qtask
node` starts without Qiskit in its own process."""

from __future__ import annotations

import subprocess
import sys

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


def test_a_nodes_own_process_imports_neither_qiskit_nor_aer() -> None:
    """Its children run Aer; the node's process only routes their replies (pickled
    node_child types), so it starts without Qiskit's imports (0.6 s here)."""
    code = (
        "import sys, pickle, qtask.cli, qtask.mesh.node\n"
        "from qtask.mesh.node_child import Calibration\n"
        "pickle.loads(pickle.dumps(Calibration(0.9, 0.0, 0.9, 0.9)))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('qiskit', 'qiskit_aer')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
