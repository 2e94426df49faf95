"""The `ibm` remote backend: an IBM Quantum device through qiskit-ibm-runtime.

submit = load the task's circuit, transpile it for the device (preset pass manager, level 1),
run it as one Sampler pub (`qiskit_ibm_runtime.executor_sampler.Sampler`; SamplerV2 is
deprecated) and return the job id. statuses = `service.job(id).status()` per job (IBM has no
batch status call), at most _CONCURRENT_CALLS at once; DONE reads the counts (and per-shot
memory) from the pub's classical registers, ERROR `error_message()`. cancel = `job.cancel()`.

Every Qiskit and IBM call is blocking and lives in IbmSession, which runs in a child process of
its own (runtime.provider_host.ChildHost), started on first use: the worker's and the poller's
main process never import Qiskit or qiskit-ibm-runtime, and the session (service, device, jobs
submitted from this process) lives as long as that child. Tests hand the backend a fake service
through `service_factory`; the session then runs in threads of the test's process.

IBM has no idempotency key: a worker killed between IBM's accept and the stored job id leaves
the delivery unacknowledged, the redelivery submits again, and the first job is orphaned (it
runs and is billed; nothing polls it). The token is read from the environment variable
`token_env` by the main process when the backend is first used, handed to the child, and never
logged; without it the backend's health says so and its submissions fail for good (start-up
does not).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qtask.config import LimitsSettings
from qtask.config_backends import IbmBackendSettings
from qtask.domain.backends import BackendCapabilities, BackendKind
from qtask.domain.remote import RemoteState, RemoteStatus, provider_state
from qtask.domain.task import Task
from qtask.errors import QTaskError, RemoteRejectedError, RemoteUnavailableError
from qtask.execution.remote_base import ConfiguredRemote, bounded_statuses
from qtask.logs import get_logger
from qtask.runtime.pool import ChildFailedError
from qtask.runtime.provider_host import ChildHost, ProviderHost, ThreadHost

log = get_logger("remote_ibm")

# Status calls in flight at once per backend (each is one HTTPS request to IBM).
_CONCURRENT_CALLS = 8
# Jobs one statuses() call names; the poller runs such calls side by side, the semaphore
# above bounds them all together.
_STATUS_BATCH = 32
# Jobs submitted by this process kept to poll without a service.job() fetch (the embedded
# poller shares the worker's process; local testing mode has no service.job()).
_RECENT_JOBS = 1024

# GET /backends waits this long for the service and device on first use (once the session's
# process has started); later calls reuse them.
_HEALTH_TIMEOUT_S = 5.0
# A submission transpiles for a 100+ qubit device (seconds) and uploads the job.
_SUBMIT_TIMEOUT_S = 300.0
# One status or cancel call: one HTTPS request (a DONE job's result download included).
_STATUS_TIMEOUT_S = 120.0

# A factory of the QiskitRuntimeService-like object: `.backend(name)` and `.job(id)`.
ServiceFactory = Callable[[], Any]


class IbmRemoteBackend(ConfiguredRemote[IbmBackendSettings]):
    """An IBM Quantum device as a RemoteBackend (domain.remote)."""

    def __init__(
        self,
        name: str,
        settings: IbmBackendSettings,
        limits: LimitsSettings,
        *,
        service_factory: ServiceFactory | None = None,
    ) -> None:
        self._name = name
        self._settings = settings
        self._limits = limits
        self._host: ProviderHost | None = None
        if service_factory is not None:  # tests: a fake service, in this process
            self._host = ThreadHost(IbmSession(settings, service_factory=service_factory))
        self._limit = asyncio.Semaphore(_CONCURRENT_CALLS)
        # Until the device is read (health): this deployment's own limits; IBM refuses what
        # the device cannot run and the task ends with its message.
        self._capabilities = BackendCapabilities(
            name=name,
            type="ibm",
            kind=BackendKind.REMOTE,
            max_qubits={"device": limits.max_qubits},
            max_shots=limits.max_shots,
            memory=True,
            seeds=_takes_seeds(settings),
            cancel=True,
        )

    @property
    def status_batch(self) -> int:
        """IBM has no batch status call: each statuses() call fans out, bounded."""
        return _STATUS_BATCH

    def _session_host(self) -> ProviderHost:
        """The child process the session lives in (started by its first call)."""
        if self._host is None:
            token = os.environ.get(self._settings.token_env, "")
            if not token and self._settings.channel != "local":
                raise RemoteRejectedError(
                    f"The IBM backend {self._name} has no token: the environment variable "
                    f"{self._settings.token_env} is not set."
                )
            self._host = ChildHost(
                "qtask.execution.remote_ibm:IbmSession",
                (self._settings, token),
                preload=("qiskit", "qiskit_ibm_runtime"),
                threads=_CONCURRENT_CALLS,
            )
        return self._host

    async def health(self) -> str:
        """ "ok" (and the capabilities read from the device), or why not."""
        try:
            self._capabilities = _device_capabilities(
                self._name,
                await self._session_host().call("device", timeout=_HEALTH_TIMEOUT_S),
                self._limits,
                seeds=_takes_seeds(self._settings),
            )
        except RemoteRejectedError as exc:
            return str(exc)
        except (RemoteUnavailableError, ChildFailedError) as exc:
            return f"IBM device {self._settings.device} unavailable: {exc}"
        return "ok"

    async def submit(self, task: Task) -> str:
        """Transpile for the device and start a Sampler job (in the session's process); its id."""
        job_id = str(await self._session_host().call("submit", task, timeout=_SUBMIT_TIMEOUT_S))
        log.info("ibm_submitted", task_id=task.id, job_id=job_id)
        return job_id

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        """Each job's status, _CONCURRENT_CALLS calls at once; a job IBM does not answer for
        is left out (polled again); if none could be read, RemoteUnavailableError."""
        return await bounded_statuses(
            "IBM", job_ids, self._session_host, _STATUS_TIMEOUT_S, self._limit, _status_failed
        )

    async def cancel(self, job_id: str) -> None:
        """job.cancel(); a job that already ended raises there, which is fine (best effort)."""
        await self._session_host().call("cancel", job_id, timeout=_STATUS_TIMEOUT_S)

    async def close(self) -> None:
        """Stop the session's process (qiskit-ibm-runtime holds no connection to close)."""
        # The closed host stays: a call racing the shutdown fails as unavailable instead of
        # starting a new child.
        if self._host is not None:
            await self._host.close()


def _status_failed(job_id: str, exc: QTaskError) -> None:
    log.warning("ibm_status_failed", job_id=job_id, reason=f"{type(exc).__name__}")


class IbmSession:
    """The blocking side: service, device, Qiskit and the jobs this process submitted. Built
    in the provider child (ChildHost) from picklable arguments, or in-process by tests."""

    def __init__(
        self,
        settings: IbmBackendSettings,
        token: str = "",
        *,
        service_factory: ServiceFactory | None = None,
    ) -> None:
        self._settings = settings
        self._token = token
        self._factory = service_factory or self._runtime_service
        self._service: Any = None
        self._device: Any = None
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, Any] = OrderedDict()

    def _runtime_service(self) -> Any:
        if self._settings.channel == "local":
            return _LocalTestingService()
        if not self._token:
            raise RemoteRejectedError(
                f"The IBM backend has no token: the environment variable "
                f"{self._settings.token_env} is not set."
            )
        from qiskit_ibm_runtime import QiskitRuntimeService  # heavy, lazy

        return QiskitRuntimeService(
            channel=self._settings.channel, token=self._token, instance=self._settings.instance
        )

    def _backend(self) -> Any:
        with self._lock:  # one service and device, however many calls arrive at once
            if self._device is None:
                if self._service is None:
                    self._service = self._factory()
                self._device = self._service.backend(self._settings.device)
            return self._device

    def device(self) -> DeviceFacts:
        """What the backend's capabilities need of the device."""
        try:
            return _device_facts(self._backend())
        except RemoteRejectedError:
            raise
        except Exception as exc:
            raise _classify(exc, "reach the device") from exc

    def submit(self, task: Task) -> str:
        """Transpile for the device and start a Sampler job; its id."""
        try:
            device = self._backend()
        except RemoteRejectedError:
            raise
        except Exception as exc:
            raise _classify(exc, "reach the device") from exc
        try:
            isa = _transpile(task, device)
        except Exception as exc:
            raise RemoteRejectedError(
                f"The circuit cannot run on IBM device {self._settings.device}: {exc}"
            ) from exc
        try:
            job = _run(isa, device, task)
        except Exception as exc:
            raise _classify(exc, "submit the job") from exc
        job_id = str(job.job_id())
        with self._lock:
            self._recent[job_id] = job
            while len(self._recent) > _RECENT_JOBS:
                self._recent.popitem(last=False)
        return job_id

    def _job(self, job_id: str) -> Any:
        job = self._recent.get(job_id)
        if job is None:
            self._backend()
            job = self._service.job(job_id)
        return job

    def status(self, job_id: str) -> RemoteStatus:
        """The job's state and, once ended, its outcome."""
        try:
            return self._status(job_id)
        except QTaskError:
            raise
        except Exception as exc:
            raise RemoteUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    def _status(self, job_id: str) -> RemoteStatus:
        job = self._job(job_id)
        raw = job.status()
        # Remote jobs answer strings; local testing mode's jobs qiskit's JobStatus enum.
        state = provider_state("ibm", str(getattr(raw, "name", raw)))
        if state is RemoteState.DONE:
            counts, memory = _counts(job.result())
            self._recent.pop(job_id, None)
            return RemoteStatus(state, counts=counts, memory=memory)
        if state is RemoteState.ERROR:
            self._recent.pop(job_id, None)
            return RemoteStatus(state, message=f"IBM Quantum: {job.error_message()}")
        if state is RemoteState.CANCELLED:
            self._recent.pop(job_id, None)
            return RemoteStatus(state, message="The job was cancelled at IBM Quantum.")
        return RemoteStatus(state)

    def cancel(self, job_id: str) -> None:
        """job.cancel()."""
        try:
            self._job(job_id).cancel()
        except Exception as exc:
            raise _classify(exc, "cancel the job") from exc


class _LocalTestingService:
    """qiskit-ibm-runtime's local testing mode: its fake devices, offline. (Its own
    QiskitRuntimeService(channel="local") builds every fake device to find one, ~70 of them.)"""

    def backend(self, name: str) -> Any:
        from qtask.execution.devices import fake_backend

        return fake_backend(name)

    def job(self, job_id: str) -> Any:
        raise RemoteRejectedError(
            f"IBM's local testing mode keeps no job {job_id} (it lives in the process that "
            "submitted it, which has stopped)"
        )


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """A device's shape, read in the session's process and sent back (picklable)."""

    num_qubits: int
    coupling: tuple[tuple[int, int], ...] | None
    max_shots: int | None
    operations: tuple[str, ...]


def _device_facts(device: Any) -> DeviceFacts:
    coupling = getattr(device, "coupling_map", None)
    config = getattr(device, "configuration", lambda: None)()
    return DeviceFacts(
        num_qubits=int(device.num_qubits),
        coupling=tuple((int(a), int(b)) for a, b in coupling.get_edges()) if coupling else None,
        max_shots=getattr(config, "max_shots", None),
        operations=tuple(sorted(str(op) for op in device.operation_names)),
    )


def _transpile(task: Task, device: Any) -> Any:
    from qiskit.transpiler import generate_preset_pass_manager

    from qtask.execution.aer import load_circuit  # imports Qiskit
    from qtask.execution.items import RunItem

    circuit = load_circuit(RunItem.from_task(task))
    return generate_preset_pass_manager(backend=device, optimization_level=1).run(circuit)


def _run(circuit: Any, device: Any, task: Task) -> Any:
    from qiskit_ibm_runtime.executor_sampler import Sampler

    sampler = Sampler(mode=device)
    if task.seed is not None and str(getattr(device, "name", "")).startswith("fake_"):
        sampler.options.simulator.seed_simulator = task.seed
    return sampler.run([circuit], shots=task.shots)


def _counts(result: Any) -> tuple[dict[str, int], list[str]]:
    """Counts and per-shot bitstrings from a one-pub Sampler result, keys as Aer writes them:
    the classical registers' bits, the last register leftmost, registers spaced."""
    data = result[0].data
    registers = [data[name].get_bitstrings() for name in data]
    memory = [" ".join(bits) for bits in zip(*reversed(registers), strict=True)]
    return dict(Counter(memory)), memory


def _classify(exc: Exception, doing: str) -> Exception:
    """Network trouble and IBM's 5xx/429 are worth another try; anything else is final."""
    network: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    try:
        from requests import RequestException  # qiskit-ibm-runtime's HTTP client
    except ImportError:  # pragma: no cover (installed with qiskit-ibm-runtime)
        pass
    else:
        network = (*network, RequestException)
    text = f"IBM Quantum: could not {doing}: {type(exc).__name__}: {exc}"
    status = getattr(exc, "status_code", None)
    transient = isinstance(exc, network) or (
        isinstance(status, int) and (status == 429 or status >= 500)
    )
    if transient:
        return RemoteUnavailableError(text)
    return RemoteRejectedError(text)


def _takes_seeds(settings: IbmBackendSettings) -> bool:
    """Hardware samples; a seed reaches only a fake device (local testing mode), as submit
    passes it (IbmSession)."""
    return settings.device.startswith("fake_")


def _device_capabilities(
    name: str, device: DeviceFacts, limits: LimitsSettings, *, seeds: bool
) -> BackendCapabilities:
    qubits = device.num_qubits
    return BackendCapabilities(
        name=name,
        type="ibm",
        kind=BackendKind.REMOTE,
        max_qubits={"device": min(qubits, limits.max_qubits)},
        max_shots=min(limits.max_shots, int(device.max_shots or limits.max_shots)),
        device_qubits=qubits,
        basis_gates=device.operations,
        coupling_map=device.coupling,
        noise=None,
        memory=True,
        seeds=seeds,
        cancel=True,
    )
