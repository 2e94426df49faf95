"""The `[mesh.node]` and `[mesh.coordinator]` settings (FR-011): part of qtask's one Settings.

Both roles read them from the same TOML file and `QTASK_MESH__NODE__*` /
`QTASK_MESH__COORDINATOR__*` variables, validated at start-up with the setting's name in the
error. Shape only: nothing here imports libp2p.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from qtask.mesh.protocol import NoiseSpec

# The gates an Aer node runs when its configuration names none.
DEFAULT_GATES: tuple[str, ...] = (
    "id", "x", "y", "z", "h", "s", "sdg", "t", "tdg", "sx", "rx", "ry", "rz", "p", "u",
    "cx", "cz", "swap", "ccx", "measure", "barrier", "reset",
)  # fmt: skip


class NodeSettings(BaseModel):
    """A service node (`qtask node`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # libp2p listen address; port 0 picks a free one (the node logs and advertises it).
    listen: str = "/ip4/127.0.0.1/tcp/0"
    # Multiaddrs (with /p2p/<peer id>) of the coordinator or other peers to join through.
    bootstrap: tuple[str, ...] = ()
    # Where the node's private key lives, so a restarted node keeps its peer id; none: a new
    # identity per run.
    identity_file: Path | None = None
    service_type: str = "aer"
    gates: tuple[str, ...] = DEFAULT_GATES
    min_qubits: int = Field(default=1, ge=1)
    max_qubits: int = Field(default=20, ge=1, le=30)
    noise: NoiseSpec = NoiseSpec()
    capacity: int = Field(default=2, ge=1, le=64)  # fragments run at once
    advert_interval_s: float = Field(default=2.0, gt=0, le=300)
    calibration_interval_s: float = Field(default=30.0, gt=0)
    calibration_shots: int = Field(default=2000, ge=100, le=100_000)
    # /live, /ready and /metrics of the node (0: a free port, logged).
    health_port: int | None = Field(default=None, ge=0, le=65535)


class CoordinatorSettings(BaseModel):
    """The coordinator (`qtask coordinator`): libp2p host, registry, job API and its database."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "/ip4/127.0.0.1/tcp/0"
    bootstrap: tuple[str, ...] = ()
    identity_file: Path | None = None
    database: Path = Path("qtask-mesh.db")
    # FR-002: an advert older than this marks its node unavailable.
    advert_ttl_s: float = Field(default=6.0, gt=0)
    # Link measurement: a ping to every known node this often; `ping_timeout_s` without a reply
    # counts as a lost ping (a hung node is seen only this way).
    ping_interval_s: float = Field(default=1.0, gt=0)
    ping_timeout_s: float = Field(default=1.0, gt=0)
    # FR-008 thresholds: below (or above) these a node or link is degraded and avoided.
    degraded_fidelity: float = Field(default=0.8, ge=0, le=1)
    degraded_latency_ms: float = Field(default=250.0, gt=0)
    degraded_loss: float = Field(default=0.5, ge=0, le=1)
    # FR-007 timeouts per operation class, and retries with bounded exponential backoff.
    reserve_timeout_s: float = Field(default=2.0, gt=0)
    execute_timeout_s: float = Field(default=60.0, gt=0)
    reservation_hold_s: float = Field(default=30.0, gt=0)
    # A job no node can run yet waits this long for one to advertise (a coordinator that just
    # started or restarted has heard from nobody) before it fails with the reason.
    plan_wait_s: float = Field(default=10.0, ge=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_base_s: float = Field(default=0.1, gt=0)
    backoff_max_s: float = Field(default=2.0, gt=0)
    # FR-008 records kept (qtask.mesh.retention): quality reports received within
    # `quality_keep_s`, and at most the newest `quality_keep_rows` per node, pruned every
    # `quality_prune_interval_s`.
    quality_keep_s: float = Field(default=24 * 3600.0, gt=0)
    quality_keep_rows: int = Field(default=10_000, ge=1)
    quality_prune_interval_s: float = Field(default=60.0, gt=0)


class MeshSettings(BaseModel):
    """Both mesh roles' settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: NodeSettings = NodeSettings()
    coordinator: CoordinatorSettings = CoordinatorSettings()
