"""`pip install qtask` (no extra) in a fresh venv is the client only: it imports and its command
runs, and none of the server's dependencies is installed. Installs from the package index
(pip's cache makes a rerun quick: ~7 s here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import qtask

ROOT = Path(qtask.__file__).resolve().parents[2]
SERVER_DISTRIBUTIONS = [
    "qiskit",
    "qiskit-aer",
    "fastapi",
    "uvicorn",
    "redis",
    "nats-py",
    "obstore",
    "pydantic",
    "orjson",
]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_client_install_has_the_client_and_none_of_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)  # only what the venv installed
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    # From a copy: building in the tree would leave build/ and *.egg-info behind in it.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([*pip, "install", "-q", str(source)], check=True, timeout=540)

    installed = subprocess.run(
        [*pip, "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    names = {line.split("==")[0] for line in installed.split()}
    assert {"qtask", "httpx", "rich"} <= names
    assert names.isdisjoint(SERVER_DISTRIBUTIONS)

    python = str(venv / "bin" / "python")
    imported = subprocess.run(
        [python, "-c", "import qtask.client; print(qtask.client.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the source tree: the installed package
    )
    assert imported.stdout.strip().startswith(str(venv)), imported.stderr
    # The docs pages' assets are package data: a server install from this wheel serves them.
    static = Path(imported.stdout.strip()).parents[1] / "api" / "static"
    for asset in ("swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui.css",
                  "redoc/redoc.standalone.js", "redoc/LICENSE", "swagger-ui/LICENSE"):  # fmt: skip
        assert (static / asset).is_file(), asset
    helped = subprocess.run([str(venv / "bin" / "qtask"), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0
    assert "submit" in helped.stdout
    served = subprocess.run([str(venv / "bin" / "qtask"), "serve"], capture_output=True, text=True)
    assert served.returncode == 2
    assert "pip install 'qtask[server]'" in served.stderr
