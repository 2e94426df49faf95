"""The mesh's wire contract (the `004` seed): topics, stream protocol ids and message schemas.

Everything a service node and a coordinator say to each other is one of the pydantic models
below, serialised as JSON. On a libp2p stream each message is framed as a 4-byte big-endian
length followed by that many bytes (`MAX_FRAME_BYTES` at most); a request stream carries one
request and one reply. Errors travel in replies (`ok=false`, an `ErrorInfo`), because a libp2p
stream error arrives as a bare reset with no message. Gossipsub carries adverts and quality
reports; a receiver validates each one (`validate_advert`) before it believes it.

No I/O here, and nothing of libp2p or Qiskit: both roles and the tests import this module.
Bump `PROTOCOL_VERSION` (and the ids' versions) when a message changes incompatibly.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROTOCOL_VERSION = 1

# Gossipsub topics: each node publishes its advert (FR-001) on ADVERT_TOPIC every refresh
# interval and at once when it changes; nodes and coordinators publish quality reports (FR-008).
ADVERT_TOPIC = "qtask.mesh.adverts.v1"
QUALITY_TOPIC = "qtask.mesh.quality.v1"

# Stream protocols (request/response, one exchange per stream).
RESERVE_PROTOCOL = "/qtask/mesh/reserve/1.0.0"
EXECUTE_PROTOCOL = "/qtask/mesh/execute/1.0.0"
PING_PROTOCOL = "/qtask/mesh/ping/1.0.0"
# Fault injection (mesh part 2): served only by nodes with `[mesh.node] faults_enabled = true`,
# a test and experiment hook (qtask.mesh.faults).
FAULT_PROTOCOL = "/qtask/mesh/fault/1.0.0"

# One frame holds a statevector hand-off of up to 22 qubits (16·2^22 B = 64 MiB) plus JSON.
MAX_FRAME_BYTES = 96 * 1024 * 1024
# How far in the future an advert's timestamp may be before it is refused as forged or skewed.
MAX_CLOCK_SKEW_S = 5.0

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Availability(enum.StrEnum):
    """What a node says about taking new work."""

    AVAILABLE = "available"  # has free capacity now
    BUSY = "busy"  # every slot is reserved; reservations get a next window
    DRAINING = "draining"  # shutting down: takes nothing new


class NoiseSpec(_Message):
    """A node's configured noise, which it runs as a real Aer noise model: depolarizing errors
    after each 1- and 2-qubit gate and a symmetric readout error."""

    depolarizing_1q: Probability = 0.0
    depolarizing_2q: Probability = 0.0
    readout: Probability = 0.0


class Advert(_Message):
    """FR-001: a node's capabilities and health, published on ADVERT_TOPIC."""

    version: Literal[1] = 1
    node_id: str = Field(min_length=1, max_length=128)  # the libp2p peer id (base58)
    service_type: str = Field(default="aer", min_length=1, max_length=64)
    gates: tuple[str, ...] = Field(min_length=1, max_length=64)  # gate names it executes
    qubit_range: tuple[int, int]  # (min, max) qubits a fragment may have on this node
    fidelity: Probability  # measured by the node's calibration runs, never configured
    fidelity_measured_at: float  # unix seconds of that calibration
    noise: NoiseSpec
    availability: Availability
    capacity: int = Field(ge=1)  # concurrent fragments
    in_use: int = Field(ge=0)
    addrs: tuple[str, ...] = ()  # multiaddrs to dial, /p2p/<node_id> included
    timestamp: float  # unix seconds when published
    seq: int = Field(ge=0)  # increases with every advert of one node run: newer wins

    @model_validator(mode="after")
    def _ranges(self) -> Advert:
        low, high = self.qubit_range
        if not 1 <= low <= high:
            raise ValueError(f"qubit_range must satisfy 1 <= min <= max, got {self.qubit_range}")
        return self


def validate_advert(advert: Advert, *, signer: str, now: float) -> str | None:
    """Why an advert, already schema-valid, must be refused; None when it is acceptable.

    `signer` is the peer id that signed the gossipsub message: gossipsub's strict signing only
    proves who sent it, so the claim `node_id` must match it here.
    """
    if advert.node_id != signer:
        return f"node_id {advert.node_id} is not the signing peer {signer}"
    if advert.timestamp > now + MAX_CLOCK_SKEW_S:
        return f"timestamp {advert.timestamp:.3f} is in the future (now {now:.3f})"
    if advert.in_use > advert.capacity:
        return f"in_use {advert.in_use} exceeds capacity {advert.capacity}"
    return None


class ErrorInfo(_Message):
    """Why a request failed; `code` is stable (snake_case), `message` is for people."""

    code: str
    message: str


class ReserveRequest(_Message):
    """FR-005: reserve (or release) one execution window on a node."""

    action: Literal["reserve", "release"] = "reserve"
    correlation_id: str = Field(min_length=1, max_length=128)
    reservation_id: str = Field(min_length=1, max_length=128)
    job_id: str = Field(default="", max_length=128)
    fragment_id: str = Field(default="", max_length=128)
    operation: str = Field(default="execute", max_length=64)
    gates: tuple[str, ...] = ()
    num_qubits: int = Field(default=1, ge=1)
    window_start: float = 0.0  # unix seconds
    window_end: float = 0.0
    min_fidelity: Probability = 0.0


class ReserveReply(_Message):
    """Accepted, or rejected with the reason and the next window that would be accepted."""

    ok: bool
    correlation_id: str
    reservation_id: str
    node_id: str
    error: ErrorInfo | None = None
    next_window: tuple[float, float] | None = None


class Instruction(_Message):
    """One operation of the internal IR (FR-003): gate order is list order."""

    name: str = Field(min_length=1, max_length=64)
    qubits: tuple[int, ...] = ()
    clbits: tuple[int, ...] = ()
    params: tuple[float, ...] = ()


class CircuitIR(_Message):
    """A circuit or fragment as the IR: registers flattened to indices, measurements kept."""

    num_qubits: int = Field(ge=1)
    num_clbits: int = Field(ge=0)
    instructions: tuple[Instruction, ...]
    # Classical register names and sizes, in order, so counts read as the submitted circuit's.
    cregs: tuple[tuple[str, int], ...] = ()


class ExecuteRequest(_Message):
    """Run one fragment on the node (with a reservation, if the coordinator made one)."""

    correlation_id: str = Field(min_length=1, max_length=128)
    job_id: str = Field(default="", max_length=128)
    fragment_id: str = Field(default="", max_length=128)
    reservation_id: str | None = None
    circuit: CircuitIR
    shots: int = Field(ge=1, le=1_000_000)
    seed: int | None = None
    # State hand-off between fragments (mesh part 2): base64 of the input state, and whether to
    # return the output state instead of sampling counts.
    input_state: str | None = None
    return_state: bool = False


class ExecuteReply(_Message):
    """Counts (or the output state) and how long the node took, or an error."""

    ok: bool
    correlation_id: str
    node_id: str
    counts: dict[str, int] | None = None
    state: str | None = None
    error: ErrorInfo | None = None
    queued_s: float = 0.0
    run_s: float = 0.0


class Ping(_Message):
    """Liveness and link latency: the reply echoes the nonce."""

    nonce: str = Field(min_length=1, max_length=64)
    sent_at: float = 0.0


class Pong(_Message):
    nonce: str
    node_id: str


class QualityReport(_Message):
    """FR-008: a measured fidelity of a node, or a measured link (latency, loss) to a peer."""

    version: Literal[1] = 1
    kind: Literal["fidelity", "link"]
    reporter: str  # peer id that measured (and signed) it
    node_id: str  # the node it is about
    peer_id: str | None = None  # for links: the other end
    fidelity: Probability | None = None
    latency_ms: float | None = Field(default=None, ge=0.0)
    loss: Probability | None = None
    measured_at: float


class FaultRequest(_Message):
    """Set or clear a node's injected faults (only nodes with `faults_enabled` answer).

    `latency_ms` is added before every reply; `drop_rate` of requests are answered with a
    stream reset (seeded RNG); `extra_depolarizing` is added to the node's 1- and 2-qubit
    depolarizing noise (the node re-calibrates and re-advertises); after `duration_s` the
    faults clear themselves (None: until cleared)."""

    action: Literal["set", "clear"] = "set"
    latency_ms: float = Field(default=0.0, ge=0.0, le=600_000.0)
    drop_rate: Probability = 0.0
    extra_depolarizing: Probability = 0.0
    duration_s: float | None = Field(default=None, gt=0.0)


class FaultReply(_Message):
    """The faults now active on the node (an empty dict: none)."""

    ok: bool
    node_id: str
    active: dict[str, float] = {}
    error: ErrorInfo | None = None
