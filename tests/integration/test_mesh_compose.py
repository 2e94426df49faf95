"""docker-compose.mesh.yml's fixed coordinator identity: the default key and the peer id the
nodes bootstrap to belong together, and `python -m qtask.mesh.identity` prints such pairs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from qtask.mesh.identity import peer_id_of

COMPOSE = Path(__file__).parents[2] / "docker-compose.mesh.yml"


def test_the_compose_files_default_key_has_the_peer_id_its_nodes_bootstrap_to() -> None:
    text = COMPOSE.read_text()
    [key] = re.findall(r"\$\{MESH_COORDINATOR_KEY:-([^}]+)\}", text)
    peers = set(re.findall(r"\$\{MESH_COORDINATOR_PEER_ID:-([^}]+)\}", text))
    assert peers == {peer_id_of(key)}


def test_the_identity_module_prints_a_key_and_its_peer_id(tmp_path: Path) -> None:
    key_file = tmp_path / "coordinator.key"
    lines = [
        subprocess.run(
            [sys.executable, "-m", "qtask.mesh.identity", *args],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.splitlines()
        for args in ([str(key_file)], [str(key_file)], [])
    ]  # fmt: skip
    made, again, fresh = (dict(line.split("=", 1) for line in out) for out in lines)
    assert made == again  # the file's key, made by the first call
    assert made["MESH_COORDINATOR_PEER_ID"] == peer_id_of(made["MESH_COORDINATOR_KEY"])
    assert fresh["MESH_COORDINATOR_KEY"] != made["MESH_COORDINATOR_KEY"]
