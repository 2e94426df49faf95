"""The `[backends.<name>]` settings: one table per execution backend, each with a `type`.

A fresh install offers BUILT_IN_BACKENDS with no configuration at all: `aer` (the default) and a
few IBM devices simulated with their noise. Tables in the TOML file (or QTASK_BACKENDS__<NAME>__*
variables) add backends, replace a built-in one of the same name, or remove it (`type = "off"`).
Only the shape is checked here; whether a device exists is checked when the backends are built
(execution.catalog), which fails start-up naming `backends.<name>.device`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Names as they appear in GET /backends and in submissions; lower case because the environment
# form (QTASK_BACKENDS__FAKE_FEZ__TYPE) is read case-insensitively.
BACKEND_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


class AerBackendSettings(BaseModel):
    """Qiskit Aer's ideal simulator in the worker's child processes; the method is chosen per
    circuit (stabilizer, statevector, matrix product state)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["aer"]


class AerDeviceBackendSettings(BaseModel):
    """Aer with an IBM device's noise model, basis gates and coupling map, from one of
    qiskit-ibm-runtime's fake devices; circuits are transpiled for the device first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["aer_device"]
    # The fake device's backend_name, e.g. fake_brisbane (qiskit_ibm_runtime.fake_provider).
    device: str = Field(pattern=r"^fake_[a-z0-9_]+$")


class QtaskBackendSettings(BaseModel):
    """Another qtask deployment (federation): tasks are sent there with POST /tasks and polled
    with GET /tasks?ids=... (execution.remote_qtask)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["qtask"]
    # The other deployment's base URL, e.g. https://qtask.example.org
    url: str = Field(pattern=r"^https?://")
    # The name of the environment variable holding its API key (never the key itself).
    api_key_env: str | None = None
    # Which of its backends runs the tasks; None: its default.
    remote_backend: str | None = None
    # Provider queues take hours: a job still unfinished after this is cancelled there.
    remote_timeout_s: float = Field(default=86400.0, gt=0)
    poll_interval_s: float = Field(default=2.0, gt=0)


class IbmBackendSettings(BaseModel):
    """An IBM Quantum device through qiskit-ibm-runtime (execution.remote_ibm): circuits are
    transpiled for the device and run as Sampler jobs; the poller reads each job's status."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ibm"]
    # The device, e.g. ibm_brisbane (service.backend(device)).
    device: str = Field(min_length=1)
    # The IBM Cloud instance (CRN or name); None: the account's default.
    instance: str | None = None
    # The name of the environment variable holding the API token (never the token itself).
    # Unset at start-up is allowed: the backend's health says so and its tasks fail.
    token_env: str = "QISKIT_IBM_TOKEN"
    # qiskit-ibm-runtime's channels; "local" is its local testing mode: `device` is then one
    # of its fake devices (fake_brisbane, ...), simulated offline with no token. Its jobs live
    # in the submitting process only: for `qtask serve`, not for a separate `qtask poller`.
    channel: Literal["ibm_quantum_platform", "ibm_cloud", "local"] = "ibm_quantum_platform"
    remote_timeout_s: float = Field(default=86400.0, gt=0)
    poll_interval_s: float = Field(default=5.0, gt=0)


class BraketLocalBackendSettings(BaseModel):
    """Amazon Braket's local state-vector simulator in the worker's child processes
    (execution.braket_local); needs the `braket` extra."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["braket_local"]


class BraketBackendSettings(BaseModel):
    """An Amazon Braket device (execution.remote_braket): tasks are created with the qtask task
    id as client token, results land in the S3 bucket/prefix below. AWS credentials and region
    come from the environment (AWS_*), as boto3 reads them; never from this file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["braket"]
    # e.g. arn:aws:braket:::device/quantum-simulator/amazon/sv1
    device_arn: str = Field(pattern=r"^arn:aws[a-z-]*:braket:")
    # The AWS region of the device; None: the environment's (AWS_REGION / AWS_DEFAULT_REGION).
    region: str | None = None
    # Where Braket writes each task's results (the account must be allowed to write there).
    s3_bucket: str = Field(min_length=3)
    s3_prefix: str = "qtask"
    remote_timeout_s: float = Field(default=86400.0, gt=0)
    poll_interval_s: float = Field(default=5.0, gt=0)


class MeshBackendSettings(BaseModel):
    """The mesh of the 004 seed: tasks are sent to a `qtask coordinator` with POST
    /api/v1/circuits/submit and polled with GET /api/v1/jobs/{id} (execution.remote_mesh)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mesh"]
    # The coordinator's base URL, e.g. http://127.0.0.1:8100
    url: str = Field(pattern=r"^https?://")
    # The name of the environment variable holding its API key (never the key itself).
    api_key_env: str | None = None
    # FR-009's constraint sent with every job: the node that runs it must measure at least this.
    min_fidelity: float = Field(default=0.0, ge=0.0, le=1.0)
    remote_timeout_s: float = Field(default=3600.0, gt=0)
    poll_interval_s: float = Field(default=0.5, gt=0)


class OffBackendSettings(BaseModel):
    """Removes the built-in backend of the same name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["off"]


RunnableBackendSettings = (
    AerBackendSettings
    | AerDeviceBackendSettings
    | QtaskBackendSettings
    | IbmBackendSettings
    | BraketLocalBackendSettings
    | BraketBackendSettings
    | MeshBackendSettings
)
# A `[backends.<name>]` table as written: a runnable backend, or `type = "off"`.
AnyBackendSettings = RunnableBackendSettings | OffBackendSettings
BackendSettings = Annotated[AnyBackendSettings, Field(discriminator="type")]

# Three devices of the three processor families a newcomer is likely to meet: Eagle (127
# qubits, ECR), Heron r1 (133, CZ) and Heron r2 (156, CZ). Each costs nothing until a task
# names it: its simulator is built on first use in each worker process.
BUILT_IN_BACKENDS: dict[str, RunnableBackendSettings] = {
    "aer": AerBackendSettings(type="aer"),
    "fake_brisbane": AerDeviceBackendSettings(type="aer_device", device="fake_brisbane"),
    "fake_torino": AerDeviceBackendSettings(type="aer_device", device="fake_torino"),
    "fake_fez": AerDeviceBackendSettings(type="aer_device", device="fake_fez"),
}


def effective_backends(
    configured: dict[str, AnyBackendSettings],
) -> dict[str, RunnableBackendSettings]:
    """The built-in backends overlaid with the configured ones, less those turned off."""
    merged: dict[str, RunnableBackendSettings] = dict(BUILT_IN_BACKENDS)
    for name, table in configured.items():
        if isinstance(table, OffBackendSettings):
            merged.pop(name, None)
        else:
            merged[name] = table
    return merged
