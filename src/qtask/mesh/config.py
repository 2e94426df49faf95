"""The `[mesh.node]` and `[mesh.coordinator]` settings (FR-011): part of qtask's one Settings.

Both roles read them from the same TOML file and `QTASK_MESH__NODE__*` /
`QTASK_MESH__COORDINATOR__*` variables, validated at start-up with the setting's name in the
error. Shape only: nothing here imports libp2p.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from qtask.mesh.protocol import FaultRequest, NoiseSpec

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
    # Mesh part 2: the widest state a node accepts or returns in a hand-off. A density matrix
    # (noisy node) is 16·4^n bytes: 16 MiB at 10 qubits; a statevector (ideal node) is
    # 16·2^n: 64 MiB at 22 qubits, the frame limit (protocol.MAX_FRAME_BYTES is 96 MiB).
    max_density_qubits: int = Field(default=10, ge=1, le=11)
    max_statevector_qubits: int = Field(default=22, ge=1, le=22)
    # Fault injection (qtask.mesh.faults): a test and experiment hook, off by default. With it
    # on the node serves FAULT_PROTOCOL; `faults` sets faults from the start; `fault_seed`
    # seeds the drop RNG.
    faults_enabled: bool = False
    faults: FaultRequest | None = None
    fault_seed: int = 0


class PlannerSettings(BaseModel):
    """The planner's cost model and limits (`[mesh.coordinator.planner]`; docs/mesh.md,
    "Planner and cost model"). Costs are in milliseconds-equivalent: each weight turns its
    term into ms so the three can be added."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # cost = latency_weight * makespan_ms + fidelity_weight * (1 - est_fidelity)
    #        + transfer_weight * transfer_ms (every state hand-off's bytes and hop).
    latency_weight: float = Field(default=1.0, ge=0)
    # 1000: losing 1 % of estimated fidelity costs as much as 10 ms of latency.
    fidelity_weight: float = Field(default=1000.0, ge=0)
    transfer_weight: float = Field(default=1.0, ge=0)
    # Hand-off width caps. Ideal nodes pass statevectors (16·2^n B: 16 MiB at 20 qubits, within
    # one protocol frame); noisy nodes pass density matrices (16·4^n B: 16 MiB at 10 qubits),
    # because a statevector would carry one noise trajectory and give a wrong distribution.
    statevector_max_qubits: int = Field(default=20, ge=1, le=22)
    density_max_qubits: int = Field(default=10, ge=1, le=11)
    # Run-time estimate of a fragment: base + per-amplitude gate cost (+ per shot when sampling).
    run_base_ms: float = Field(default=5.0, ge=0)
    gate_ns_per_amplitude: float = Field(default=2.0, ge=0)
    shot_us: float = Field(default=1.0, ge=0)
    # Orchestration per remote fragment (reserve + execute bookkeeping; ~7 ms measured, part 1).
    fragment_overhead_ms: float = Field(default=7.0, ge=0)
    # A node without a link measurement yet is assumed this far away (penalises the unknown).
    unknown_latency_ms: float = Field(default=50.0, ge=0)
    # A busy node answers with a later window: assumed to delay the fragment this much.
    busy_penalty_ms: float = Field(default=50.0, ge=0)
    # State hand-off bandwidth when the registry has no measurement (loopback py-libp2p).
    bandwidth_bytes_per_s: float = Field(default=100e6, gt=0)
    # Calibration circuits (Bell: 4 operations with its measurements, GHZ-3: 6) hold 5 on
    # average: a node's measured fidelity is taken as per this many operations.
    calibration_gates: float = Field(default=5.0, gt=0)
    # Exact search over assignments up to this many combinations; greedy beyond.
    exact_search_max: int = Field(default=512, ge=1)


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
    # Added to execute_timeout_s when a state travels with the request or the reply (a
    # 10-qubit density matrix is 16 MiB each way).
    transfer_timeout_s: float = Field(default=10.0, gt=0)
    reservation_hold_s: float = Field(default=30.0, gt=0)
    # A job no node can run yet waits this long for one to advertise (a coordinator that just
    # started or restarted has heard from nobody) before it fails with the reason.
    plan_wait_s: float = Field(default=10.0, ge=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    # "module:function" of a planner replacing qtask.mesh.runtime.default_plan (same
    # signature): a hook for tests and experiments that force a fragment DAG; none: the planner.
    planner_hook: str | None = None
    backoff_base_s: float = Field(default=0.1, gt=0)
    backoff_max_s: float = Field(default=2.0, gt=0)
    planner: PlannerSettings = PlannerSettings()
    # FR-008 records kept (qtask.mesh.retention): quality reports received within
    # `quality_keep_s`, and at most the newest `quality_keep_rows` per node, pruned every
    # `quality_prune_interval_s`; decisions older than `quality_keep_s` whose job has ended.
    quality_keep_s: float = Field(default=24 * 3600.0, gt=0)
    quality_keep_rows: int = Field(default=10_000, ge=1)
    quality_prune_interval_s: float = Field(default=60.0, gt=0)


class MeshSettings(BaseModel):
    """Both mesh roles' settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: NodeSettings = NodeSettings()
    coordinator: CoordinatorSettings = CoordinatorSettings()
