"""Start `qtask coordinator` as a process for mesh tests: a free HTTP port, a database in the
test's directory, its peer id and multiaddrs read from its log (meshkit.MeshProcess)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx

from meshkit import MeshProcess
from qtask_testkit import free_port, wait_ready


class CoordinatorProcess(MeshProcess):
    """`qtask coordinator` with its HTTP API at `url`."""

    def __init__(self, directory: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        settings = {
            "QTASK_MESH__COORDINATOR__DATABASE": str(directory / "mesh.db"),
            "QTASK_MESH__COORDINATOR__IDENTITY_FILE": str(directory / "identity.key"),
            "QTASK_LOG__JSON_OUTPUT": "true",
            **(env or {}),
        }
        command = [sys.executable, "-m", "qtask", "coordinator", "--port", str(self.port)]
        super().__init__(command, directory / "coordinator.log", settings)

    def start(self, timeout: float = 60.0) -> CoordinatorProcess:
        """Start it and wait until its libp2p host and its HTTP API both answer."""
        super().start(timeout)
        assert self.process is not None
        wait_ready(self.url, self.process, "qtask coordinator", lambda: self.log()[-4000:], timeout)
        return self

    def get(self, path: str, **params: Any) -> Any:
        """GET a JSON body from its API."""
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()
