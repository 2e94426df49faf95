"""The `braket` remote backend: an Amazon Braket device (a QPU or a managed simulator).

submit = load the task's circuit, rewrite it into Braket's gates (execution.braket_circuits) and
call CreateQuantumTask with the OpenQASM 3 program and **the qtask task id as clientToken**:
Braket answers a repeated request with the same token with the same quantum task, so a worker
killed between Braket's accept and the stored job id makes no second task when the redelivery
submits again (within the time AWS keeps a token). statuses = GetQuantumTask per job (Braket has
no batch status call: at most _CONCURRENT_CALLS at once); COMPLETED reads `results.json` from the
task's S3 output folder; FAILED carries Braket's failureReason. cancel = CancelQuantumTask.

The job id qtask stores is the task's ARN followed by how to read its measurements back as
Aer's keys (which qubit each classical bit holds, the registers' sizes): a poller in another
process, or after a restart, needs nothing else. `AwsQuantumTask.create` is not used: it sends
no client token (boto3 then makes a random one, and a retried submission a second task).

All of it is blocking and needs Qiskit and the Braket SDK: it lives in BraketSession, which runs
in a child process of its own (runtime.provider_host.ChildHost); the main process never imports
them. Credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
optionally AWS_SESSION_TOKEN), are handed to boto3 explicitly (no profile files, no instance
metadata) and are never logged; without them health says so and submissions fail for good.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qtask.config import LimitsSettings
from qtask.config_backends import BraketBackendSettings
from qtask.domain.backends import BackendCapabilities, BackendKind
from qtask.domain.remote import RemoteState, RemoteStatus, provider_state
from qtask.domain.task import Task
from qtask.errors import QTaskError, RemoteRejectedError, RemoteUnavailableError
from qtask.execution.braket_circuits import SEPARATOR, Readback
from qtask.execution.remote_base import ConfiguredRemote, bounded_statuses
from qtask.logs import get_logger
from qtask.runtime.provider_host import ChildHost, ProviderHost, ThreadHost

log = get_logger("remote_braket")

# Status calls in flight at once per backend (each one HTTPS request to Braket, a completed
# task's one more to S3).
_CONCURRENT_CALLS = 8
# Jobs one statuses() call names; the semaphore above bounds them all together.
_STATUS_BATCH = 32
_HEALTH_TIMEOUT_S = 10.0
# GET /backends reads the device's status through health(); GetDevice is asked at most this
# often (an unauthenticated page must not turn into a stream of AWS calls).
_DEVICE_FRESH_S = 60.0
_SUBMIT_TIMEOUT_S = 120.0
_STATUS_TIMEOUT_S = 120.0
# The credentials boto3 is given, read from the environment and nothing else.
_KEY_ENV = "AWS_ACCESS_KEY_ID"
_SECRET_ENV = "AWS_SECRET_ACCESS_KEY"
_TOKEN_ENV = "AWS_SESSION_TOKEN"
# Braket's error codes worth another try later; any other refusal is final.
_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "InternalServiceException",
        "ServiceQuotaExceededException",
        "DeviceOfflineException",
        "ServiceUnavailableException",
        "RequestTimeout",
        "SlowDown",
    }
)


@dataclass(frozen=True, slots=True)
class BraketClients:
    """The two boto3 clients a session uses (tests give fakes with the same methods)."""

    braket: Any
    s3: Any


ClientsFactory = Callable[[], BraketClients]


def _credentials() -> dict[str, str] | None:
    key, secret = os.environ.get(_KEY_ENV, ""), os.environ.get(_SECRET_ENV, "")
    if not key or not secret:
        return None
    found = {"aws_access_key_id": key, "aws_secret_access_key": secret}
    if token := os.environ.get(_TOKEN_ENV):
        found["aws_session_token"] = token
    return found


class BraketRemoteBackend(ConfiguredRemote[BraketBackendSettings]):
    """An Amazon Braket device as a RemoteBackend (domain.remote)."""

    def __init__(
        self,
        name: str,
        settings: BraketBackendSettings,
        limits: LimitsSettings,
        *,
        clients: ClientsFactory | None = None,
        clients_path: str | None = None,
    ) -> None:
        self._name = name
        self._settings = settings
        self._limits = limits
        self._host: ProviderHost | None = None
        if clients is not None:  # tests: fake AWS clients, in this process
            self._host = ThreadHost(BraketSession(settings, clients=clients))
        # Tests: fake AWS clients built by name in the session's child process.
        self._clients_path = clients_path
        self._limit = asyncio.Semaphore(_CONCURRENT_CALLS)
        # Until the device is read (health): this deployment's own limits; Braket refuses what
        # the device cannot run and the task ends with its message.
        self._capabilities = BackendCapabilities(
            name=name,
            type="braket",
            kind=BackendKind.REMOTE,
            max_qubits={"device": limits.max_qubits},
            max_shots=limits.max_shots,
            memory=True,
            seeds=False,
            cancel=True,
        )

    @property
    def status_batch(self) -> int:
        """Braket has no batch status call: each statuses() call fans out, bounded."""
        return _STATUS_BATCH

    def _session_host(self) -> ProviderHost:
        if self._host is None:
            if _credentials() is None and self._clients_path is None:
                raise RemoteRejectedError(
                    f"The Braket backend {self._name} has no AWS credentials: "
                    f"{_KEY_ENV} and {_SECRET_ENV} are not both set."
                )
            self._host = ChildHost(
                "qtask.execution.remote_braket:BraketSession",
                (self._settings, self._clients_path),
                preload=("qiskit", "braket.circuits", "boto3"),
                threads=_CONCURRENT_CALLS,
            )
        return self._host

    async def health(self) -> str:
        """ "ok" (and the capabilities read from the device), or why not."""
        try:
            facts = await self._session_host().call("device", timeout=_HEALTH_TIMEOUT_S)
        except QTaskError as exc:
            return str(exc)
        self._capabilities = _capabilities(self._name, facts, self._limits)
        if facts.status != "ONLINE":
            return f"Braket device {self._settings.device_arn} is {facts.status}"
        return "ok"

    async def submit(self, task: Task) -> str:
        """CreateQuantumTask with the task id as client token; the stored job id."""
        job_id = str(await self._session_host().call("submit", task, timeout=_SUBMIT_TIMEOUT_S))
        log.info("braket_submitted", task_id=task.id, job_id=job_id.split(SEPARATOR)[0])
        return job_id

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        """Each job's status, _CONCURRENT_CALLS calls at once; a job Braket does not answer
        for is left out (polled again); if none could be read, RemoteUnavailableError."""
        return await bounded_statuses(
            "Braket", job_ids, self._session_host, _STATUS_TIMEOUT_S, self._limit, _status_failed
        )

    async def cancel(self, job_id: str) -> None:
        """CancelQuantumTask; one that already ended answers ConflictException (best effort)."""
        await self._session_host().call("cancel", job_id, timeout=_STATUS_TIMEOUT_S)

    async def close(self) -> None:
        """Stop the session's process."""
        # The closed host stays: a call racing the shutdown fails as unavailable instead of
        # starting a new child.
        if self._host is not None:
            await self._host.close()


def _status_failed(job_id: str, exc: QTaskError) -> None:
    log.warning("braket_status_failed", reason=type(exc).__name__)


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What capabilities need of a Braket device (picklable: read in the session's process)."""

    status: str
    qubits: int | None
    max_shots: int | None


def job_id_of(arn: str, readback: Readback) -> str:
    """The job id stored for a Braket task (an ARN has no ';')."""
    return f"{arn}{SEPARATOR}{readback.encode()}"


def split_job_id(job_id: str) -> tuple[str, Readback]:
    """The task's ARN and its readback."""
    arn, _, rest = job_id.partition(SEPARATOR)
    return arn, Readback.decode(rest)


class BraketSession:
    """The blocking side: boto3 clients, circuit conversion, result reading. Built in the
    provider child (ChildHost) from the settings, or in-process by tests with fake clients."""

    def __init__(
        self,
        settings: BraketBackendSettings,
        clients_path: str | None = None,
        *,
        clients: ClientsFactory | None = None,
    ) -> None:
        self._settings = settings
        if clients is None and clients_path is not None:
            from qtask.runtime.pool import _resolve

            clients = _resolve(clients_path)
        self._make_clients = clients or self._boto3_clients
        self._clients: BraketClients | None = None
        self._device: tuple[float, DeviceFacts] | None = None

    def _boto3_clients(self) -> BraketClients:
        import boto3

        credentials = _credentials()
        if credentials is None:
            raise RemoteRejectedError(
                f"No AWS credentials: {_KEY_ENV} and {_SECRET_ENV} are not both set."
            )
        session = boto3.Session(region_name=self._region(), **credentials)
        return BraketClients(braket=session.client("braket"), s3=session.client("s3"))

    def _region(self) -> str | None:
        arn_region = self._settings.device_arn.split(":")[3]  # empty for managed simulators
        return (
            self._settings.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or arn_region
            or None
        )

    def _aws(self) -> BraketClients:
        if self._clients is None:
            self._clients = self._make_clients()
        return self._clients

    def device(self) -> DeviceFacts:
        """The device's status, qubits and shot limit (GetDevice, at most once a minute: every
        GET /backends asks)."""
        now = time.monotonic()
        if self._device is not None and now - self._device[0] < _DEVICE_FRESH_S:
            return self._device[1]
        facts = self._read_device()
        self._device = (now, facts)
        return facts

    def _read_device(self) -> DeviceFacts:
        try:
            answer = self._aws().braket.get_device(deviceArn=self._settings.device_arn)
        except QTaskError:
            raise
        except Exception as exc:
            raise _classify(exc, "reach the device") from exc
        capabilities = json.loads(answer.get("deviceCapabilities") or "{}")
        qubits = (capabilities.get("paradigm") or {}).get("qubitCount")
        shots = (capabilities.get("service") or {}).get("shotsRange") or [None, None]
        return DeviceFacts(
            status=str(answer.get("deviceStatus")),
            qubits=None if qubits is None else int(qubits),
            max_shots=None if shots[1] is None else int(shots[1]),
        )

    def submit(self, task: Task) -> str:
        """Convert the circuit and create the quantum task (the task id as client token)."""
        from braket.ir.openqasm import Program

        from qtask.execution.aer import load_circuit  # imports Qiskit
        from qtask.execution.braket_circuits import to_braket
        from qtask.execution.items import RunItem

        try:
            prepared = to_braket(load_circuit(RunItem.from_task(task)))
        except Exception as exc:
            raise RemoteRejectedError(f"The circuit cannot run on Amazon Braket: {exc}") from exc
        request = {
            "clientToken": task.id,
            "deviceArn": self._settings.device_arn,
            "shots": task.shots,
            "outputS3Bucket": self._settings.s3_bucket,
            "outputS3KeyPrefix": self._settings.s3_prefix,
            "action": Program(source=prepared.openqasm()).json(),
        }
        try:
            answer = self._aws().braket.create_quantum_task(**request)
        except QTaskError:
            raise
        except Exception as exc:
            raise _classify(exc, "create the quantum task") from exc
        return job_id_of(str(answer["quantumTaskArn"]), prepared.readback)

    def status(self, job_id: str) -> RemoteStatus:
        """The task's state (GetQuantumTask) and, once COMPLETED, its counts from S3."""
        arn, readback = split_job_id(job_id)
        try:
            answer = self._aws().braket.get_quantum_task(quantumTaskArn=arn)
        except QTaskError:
            raise
        except Exception as exc:
            raise _classify(exc, "read the quantum task") from exc
        state = provider_state("braket", str(answer.get("status")))
        if state is RemoteState.DONE:
            return self._result(answer, readback)
        if state is RemoteState.ERROR:
            reason = answer.get("failureReason") or "no reason given"
            return RemoteStatus(state, message=f"Amazon Braket: {reason}")
        if state is RemoteState.CANCELLED:
            return RemoteStatus(state, message="The quantum task was cancelled at Amazon Braket.")
        return RemoteStatus(state)

    def _result(self, answer: dict[str, Any], readback: Readback) -> RemoteStatus:
        from qtask.execution.braket_circuits import counts_like_aer, shots_like_aer

        key = f"{answer['outputS3Directory']}/results.json"
        try:
            body = self._aws().s3.get_object(Bucket=answer["outputS3Bucket"], Key=key)["Body"]
            document = json.loads(body.read())
        except Exception as exc:  # whatever the cause, the result is fetched again next pass
            where = f"s3://{answer.get('outputS3Bucket')}/{key}"
            raise RemoteUnavailableError(str(_classify(exc, f"read {where}"))) from exc
        measured, rows = _measurements(document)
        shots = shots_like_aer(readback, measured, rows)
        return RemoteStatus(RemoteState.DONE, counts=counts_like_aer(shots), memory=shots)

    def cancel(self, job_id: str) -> None:
        """CancelQuantumTask."""
        arn, _ = split_job_id(job_id)
        try:
            self._aws().braket.cancel_quantum_task(
                quantumTaskArn=arn, clientToken=str(uuid.uuid4())
            )
        except QTaskError:
            raise
        except Exception as exc:
            raise _classify(exc, "cancel the quantum task") from exc


def _measurements(document: dict[str, Any]) -> tuple[list[int], list[list[int]]]:
    """Measured qubits and one row of qubit values per shot, from a gate-model results.json
    (per-shot `measurements`, or `measurementProbabilities` with the task's shot count)."""
    measured = [int(q) for q in document.get("measuredQubits") or ()]
    rows = document.get("measurements")
    if rows is not None:
        return measured, [[int(v) for v in row] for row in rows]
    probabilities: dict[str, float] = document.get("measurementProbabilities") or {}
    shots = int((document.get("taskMetadata") or {}).get("shots") or 0)
    expanded = []
    for bits, probability in probabilities.items():
        expanded += [[int(b) for b in bits]] * round(probability * shots)
    return measured, expanded


def _classify(exc: Exception, doing: str) -> QTaskError:
    """Throttling, Braket's 5xx, an offline device and network trouble are worth another try;
    anything else (validation, access, a retired device) is final."""
    error = (getattr(exc, "response", None) or {}).get("Error") or {}
    code = str(error.get("Code", ""))
    cause = f"{code or type(exc).__name__}: {error.get('Message') or exc}"
    text = f"Amazon Braket: could not {doing}: {cause}"
    network = (ConnectionError, TimeoutError)
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # pragma: no cover (installed with the SDK)
        pass
    else:
        network = (*network, BotoConnectionError, HTTPClientError)  # type: ignore[assignment]
    if code in _TRANSIENT_CODES or isinstance(exc, network):
        return RemoteUnavailableError(text)
    return RemoteRejectedError(text)


def _capabilities(name: str, facts: DeviceFacts, limits: LimitsSettings) -> BackendCapabilities:
    qubits = min(facts.qubits or limits.max_qubits, limits.max_qubits)
    return BackendCapabilities(
        name=name,
        type="braket",
        kind=BackendKind.REMOTE,
        max_qubits={"device": qubits},
        max_shots=min(limits.max_shots, facts.max_shots or limits.max_shots),
        device_qubits=facts.qubits,
        memory=True,
        seeds=False,
        cancel=True,
    )
