"""The configured backends as the API and the worker see them: capabilities, health, admission.

Free of Qiskit: a device's qubits, basis gates, coupling map and gate errors come from the JSON
files that qiskit-ibm-runtime ships with each fake device (conf_<x>.json, props_<x>.json), read
directly (~5 ms a device) instead of importing the provider (~0.7 s) and Aer. The simulators
themselves are built in the worker's child processes (execution.devices).
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtask.config import LimitsSettings, Settings
from qtask.config_backends import (
    AerDeviceBackendSettings,
    BraketBackendSettings,
    BraketLocalBackendSettings,
    IbmBackendSettings,
    MeshBackendSettings,
    QtaskBackendSettings,
    RunnableBackendSettings,
)
from qtask.domain.backends import (
    BackendCapabilities,
    BackendKind,
    Backends,
    ExecutionBackend,
    GateError,
)
from qtask.domain.remote import RemoteBackend
from qtask.domain.task import CircuitInfo
from qtask.errors import ConfigError, UnknownBackendError
from qtask.execution import braket_local
from qtask.execution.methods import Method
from qtask.execution.remote_braket import BraketRemoteBackend
from qtask.execution.remote_ibm import IbmRemoteBackend
from qtask.execution.remote_mesh import MeshRemoteBackend
from qtask.execution.remote_qtask import QtaskRemoteBackend

_NANOSECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True, slots=True)
class LocalBackend:
    """A backend that runs in the worker's child processes (ExecutionBackend)."""

    capabilities: BackendCapabilities
    # The fake device whose noise it simulates, braket_local.SIMULATOR for Braket's local
    # simulator; None for ideal Aer.
    device: str | None = None

    async def health(self) -> str:
        """Local backends need nothing beyond the workers: their device data was read at start."""
        return "ok"


class BackendCatalog:
    """Every configured backend by name, and the default one."""

    def __init__(self, backends: Mapping[str, ExecutionBackend], default: str) -> None:
        self._backends = dict(backends)
        self.default = default

    def get(self, name: str | None) -> ExecutionBackend:
        """The backend called `name` (the default for None); UnknownBackendError otherwise."""
        found = self._backends.get(self.default if name is None else name)
        if found is None:
            known = ", ".join(backend.capabilities.name for backend in self.all())
            raise UnknownBackendError(f"Unknown backend {name!r}; this service offers {known}.")
        return found

    def admit(self, name: str | None, info: CircuitInfo, shots: int) -> str:
        """Check the circuit against the backend's limits (BackendLimitError, 422); return the
        backend's name."""
        backend = self.get(name)
        backend.capabilities.admit(info, shots)
        return backend.capabilities.name

    def all(self) -> list[ExecutionBackend]:
        """Every backend, the default first."""
        return sorted(self._backends.values(), key=lambda b: b.capabilities.name != self.default)

    def devices(self) -> dict[str, str | None]:
        """Backend name -> its fake device (None: ideal Aer; braket_sv: Braket's local
        simulator), what a worker's children need."""
        return {
            name: backend.device
            for name, backend in self._backends.items()
            if isinstance(backend, LocalBackend)
        }

    def remotes(self) -> dict[str, RemoteBackend]:
        """The remote backends by name (the worker submits to them, the poller polls them)."""
        return {
            name: backend
            for name, backend in self._backends.items()
            if isinstance(
                backend,
                QtaskRemoteBackend | IbmRemoteBackend | BraketRemoteBackend | MeshRemoteBackend,
            )
        }


def build_catalog(settings: Settings) -> BackendCatalog:
    """The backends of `settings`; ConfigError naming `backends.<name>.device` for a device that
    qiskit-ibm-runtime does not have."""
    backends = {
        name: _backend(name, table, settings.limits)
        for name, table in settings.backend_table.items()
    }
    return BackendCatalog(backends, settings.default_backend)


def aer_only(limits: LimitsSettings) -> BackendCatalog:
    """A catalog of ideal Aer alone (tests and callers that configure no backends)."""
    return BackendCatalog({"aer": _aer("aer", limits)}, "aer")


def _backend(
    name: str, table: RunnableBackendSettings, limits: LimitsSettings
) -> LocalBackend | QtaskRemoteBackend | IbmRemoteBackend | BraketRemoteBackend | MeshRemoteBackend:
    if isinstance(table, QtaskBackendSettings):
        return QtaskRemoteBackend(name, table, limits)
    if isinstance(table, IbmBackendSettings):
        return IbmRemoteBackend(name, table, limits)
    if isinstance(table, BraketBackendSettings):
        _needs_braket(name)
        return BraketRemoteBackend(name, table, limits)
    if isinstance(table, BraketLocalBackendSettings):
        return _braket_local(name, limits)
    if isinstance(table, MeshBackendSettings):
        return MeshRemoteBackend(name, table, limits)
    if isinstance(table, AerDeviceBackendSettings):
        return _device(name, table.device, limits)
    return _aer(name, limits)


def _statevector_qubits(limits: LimitsSettings) -> int:
    # 16 bytes per amplitude (execution.methods.statevector_bytes).
    return min(limits.max_qubits, int(math.log2((limits.max_statevector_mb << 20) / 16)))


def _aer(name: str, limits: LimitsSettings) -> LocalBackend:
    capabilities = BackendCapabilities(
        name=name,
        type="aer",
        kind=BackendKind.LOCAL,
        # Matrix product state takes what statevector cannot hold; its memory shows only when
        # it runs, bounded by the worker (execution.aer).
        max_qubits={
            Method.STABILIZER.value: limits.max_qubits,
            Method.STATEVECTOR.value: _statevector_qubits(limits),
            Method.MATRIX_PRODUCT_STATE.value: limits.max_qubits,
        },
        max_shots=limits.max_shots,
    )
    return LocalBackend(capabilities)


def _needs_braket(name: str) -> None:
    if importlib.util.find_spec("braket") is None:  # finds it without importing it
        raise ConfigError(
            f"backends.{name}.type needs the Amazon Braket SDK: pip install 'qtask[braket]'"
        )


def _braket_local(name: str, limits: LimitsSettings) -> LocalBackend:
    _needs_braket(name)
    capabilities = BackendCapabilities(
        name=name,
        type="braket_local",
        kind=BackendKind.LOCAL,
        # A state vector, in the child's memory like Aer's: the smaller of braket_sv's own
        # limit and the worker's statevector bound.
        max_qubits={
            Method.STATEVECTOR.value: min(braket_local.MAX_QUBITS, _statevector_qubits(limits))
        },
        max_shots=limits.max_shots,
        seeds=False,  # Braket's local simulator takes no seed
    )
    return LocalBackend(capabilities, braket_local.SIMULATOR)


def _device(name: str, device: str, limits: LimitsSettings) -> LocalBackend:
    conf, props = _device_files(name, device)
    qubits = int(conf["n_qubits"])
    capabilities = BackendCapabilities(
        name=name,
        type="aer_device",
        kind=BackendKind.LOCAL,
        # With a device's noise (thermal relaxation is not Clifford) Aer simulates a
        # statevector or a density matrix, whatever the circuit: the statevector bound holds.
        max_qubits={Method.STATEVECTOR.value: min(qubits, _statevector_qubits(limits))},
        max_shots=min(limits.max_shots, int(conf.get("max_shots") or limits.max_shots)),
        device_qubits=qubits,
        basis_gates=tuple(conf["basis_gates"]),
        coupling_map=tuple((int(a), int(b)) for a, b in conf.get("coupling_map") or ()),
        noise=device,
        gate_errors=_gate_errors(props),
    )
    return LocalBackend(capabilities, device)


def _device_files(name: str, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    setting = f"backends.{name}.device"
    spec = importlib.util.find_spec("qiskit_ibm_runtime")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{setting} = {device!r} needs qiskit-ibm-runtime (part of qtask[server]); "
            "it is not installed"
        )
    short = device.removeprefix("fake_")
    folder = Path(spec.submodule_search_locations[0]) / "fake_provider" / "backends" / short
    try:
        conf = json.loads((folder / f"conf_{short}.json").read_bytes())
        props = json.loads((folder / f"props_{short}.json").read_bytes())
    except (OSError, ValueError):
        raise ConfigError(
            f"{setting} = {device!r}: qiskit-ibm-runtime has no such fake device "
            "(names like fake_brisbane, fake_torino, fake_fez)"
        ) from None
    return conf, props


def _gate_errors(props: dict[str, Any]) -> tuple[GateError, ...]:
    errors = []
    for gate in props.get("gates") or ():
        values = {p["name"]: p for p in gate.get("parameters") or ()}
        error = values.get("gate_error")
        length = values.get("gate_length")
        duration = None
        if length is not None:
            duration = float(length["value"]) * _NANOSECONDS.get(length.get("unit", "ns"), 1e-9)
        errors.append(
            GateError(
                gate=str(gate["gate"]),
                qubits=tuple(int(q) for q in gate["qubits"]),
                error=None if error is None else float(error["value"]),
                duration_s=duration,
            )
        )
    return tuple(errors)


if TYPE_CHECKING:

    def _conforms(backend: LocalBackend) -> ExecutionBackend:
        return backend  # mypy checks that LocalBackend satisfies the port

    def _catalog_conforms(catalog: BackendCatalog) -> Backends:
        return catalog

    def _remote_conforms(backend: QtaskRemoteBackend) -> RemoteBackend:
        return backend

    def _ibm_conforms(backend: IbmRemoteBackend) -> RemoteBackend:
        return backend

    def _braket_conforms(backend: BraketRemoteBackend) -> RemoteBackend:
        return backend

    def _mesh_conforms(backend: MeshRemoteBackend) -> RemoteBackend:
        return backend
