"""The request and response bodies of the API, as the seed's contract (000) defines them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
)


class SubmitRequest(BaseModel):
    """POST /tasks. `quantum_circuit` is accepted as another name for `qc` (the 001 executor)."""

    model_config = ConfigDict(extra="ignore")

    qc: Annotated[
        StrictStr,
        Field(
            validation_alias=AliasChoices("qc", "quantum_circuit"),
            description="An OpenQASM 3 (or 2) program.",
        ),
    ]
    shots: StrictInt = Field(default=1024, description="Number of samples.")
    seed: StrictInt | None = Field(
        default=None, ge=0, lt=2**63, description="Simulator seed for reproducible counts."
    )
    memory: StrictBool = Field(
        default=False,
        description="Also return each shot's outcome (`memory`: one bitstring per shot, keyed "
        "as `result` is); shots x classical bits is limited (limits.max_memory_bits).",
    )
    backend: StrictStr | None = Field(
        default=None,
        description="A backend of GET /backends; the default backend when left out.",
    )


class BatchSubmitRequest(BaseModel):
    """POST /tasks/batch: several circuits in one request, each as POST /tasks takes it."""

    model_config = ConfigDict(extra="ignore")

    tasks: list[SubmitRequest] = Field(
        min_length=1, description="The circuits, each with its own shots and seed."
    )


class BatchSubmitResponse(BaseModel):
    """The answer to a batch: one task id per circuit, in the order they were sent."""

    task_ids: list[str]
    message: str


class SubmitResponse(BaseModel):
    """The answer to a submission."""

    task_id: str
    message: str


class CompletedResponse(BaseModel):
    """A finished task: counts keyed by bitstring, exactly as Qiskit's get_counts() gives them."""

    status: Literal["completed"]
    result: dict[str, int]
    memory: list[str] | None = Field(
        default=None, description='Only for tasks submitted with "memory": true: each shot.'
    )


class MessageResponse(BaseModel):
    """A pending task, an error, or a task that failed."""

    status: Literal["pending", "error"]
    message: str


class TaskListResponse(BaseModel):
    """GET /tasks?ids=...: each task's body with its id; unknown ids get the not-found body.
    GET /tasks (a listing): the caller's tasks, newest first, and the next page's cursor."""

    tasks: list[dict[str, object]]
    next_cursor: str | None = Field(
        default=None, description="Listings only: the cursor of the next page; null at the end."
    )


class HealthResponse(BaseModel):
    """Liveness or readiness, with the state of each dependency."""

    status: str
    checks: dict[str, str] = {}


class BackendInfo(BaseModel):
    """One backend of GET /backends: what it accepts and whether it can take work."""

    name: str
    type: str = Field(description="The configuration's type: aer, aer_device.")
    kind: Literal["local", "remote"]
    default: bool
    num_qubits: int = Field(description="The device's qubits, else the widest circuit accepted.")
    max_qubits: dict[str, int] = Field(description="The widest circuit each method accepts.")
    basis_gates: list[str] | None
    coupling_map: list[list[int]] | None
    noise: str | None = Field(description="The noise model's device; null when ideal.")
    max_shots: int
    memory: bool
    seeds: bool
    cancel: bool
    health: str = Field(description='"ok", or why the backend cannot take work now.')


class BackendsResponse(BaseModel):
    """GET /backends: every configured backend, the default first."""

    default: str
    backends: list[BackendInfo]
