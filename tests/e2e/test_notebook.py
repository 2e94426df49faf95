"""The example notebook (examples/qiskit_on_qtask.ipynb) runs from top to bottom against a real
`qtask serve`, in a Jupyter kernel on this interpreter; any cell that raises fails the test."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from qtask_testkit import ServerProcess

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "qiskit_on_qtask.ipynb"
KERNEL = "qtask-test-python"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data", workers=1)
    process.start()
    yield process
    process.terminate()


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec for this interpreter (the venv's python, with the tests' PYTHONPATH), found
    before any other through JUPYTER_PATH; Jupyter's and IPython's files under tmp_path."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))
    return KERNEL


def test_the_example_notebook_runs_against_qtask_serve(
    server: ServerProcess, kernel_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QTASK_URL", server.url)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=180, kernel_name=kernel_env)
    client.execute()  # raises CellExecutionError naming the cell that failed
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    text = "".join(str(output.get("text", "")) for output in outputs)
    assert "'000'" in text
    assert "'111'" in text
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert images, "the histogram cell drew no image"
