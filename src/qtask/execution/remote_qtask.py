"""The `qtask` remote backend: another qtask deployment, reached over its HTTP API (federation).

submit = POST /tasks with `Idempotency-Key: <task id>` (a retried or crashed-then-retried
submission gets the same remote task back); statuses = GET /tasks?ids=... (MAX_IDS_PER_READ at
once); cancel = DELETE /tasks/{id}. The circuit is sent as the OpenQASM the user sent, so the
worker's main process needs no Qiskit. Capabilities are the remote default backend's (or the
configured `remote_backend`'s), read from its GET /backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from qtask.config import LimitsSettings
from qtask.config_backends import QtaskBackendSettings
from qtask.constants import MAX_IDS_PER_READ
from qtask.domain.backends import BackendCapabilities, BackendKind
from qtask.domain.remote import RemoteState, RemoteStatus, provider_state
from qtask.domain.task import Task
from qtask.errors import RemoteRejectedError, RemoteUnavailableError
from qtask.execution.remote_http import HEALTH_TIMEOUT_S, HttpRemote, response_message
from qtask.logs import get_logger

log = get_logger("remote_qtask")


class QtaskRemoteBackend(HttpRemote[QtaskBackendSettings]):
    """Another qtask deployment as a RemoteBackend (domain.remote)."""

    _peer = "the remote qtask"

    def __init__(
        self,
        name: str,
        settings: QtaskBackendSettings,
        limits: LimitsSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._name = name
        self._open_http(settings, transport)
        # Until the remote's GET /backends is read: this deployment's own limits (the remote
        # refuses what it cannot run, and the task then ends with its message).
        self._capabilities = BackendCapabilities(
            name=name,
            type="qtask",
            kind=BackendKind.REMOTE,
            max_qubits={"remote": limits.max_qubits},
            max_shots=limits.max_shots,
        )

    @property
    def status_batch(self) -> int:
        """GET /tasks?ids= reads this many tasks at once."""
        return MAX_IDS_PER_READ

    async def health(self) -> str:
        """ "ok" (and the capabilities refreshed from its GET /backends), or why not."""
        try:
            response = await self._call("GET", "/backends", timeout=HEALTH_TIMEOUT_S)
            if response.status_code != 200:
                return f"the remote qtask {self._url} answered {response.status_code}"
            self._capabilities = self._read_capabilities(response.json())
        except RemoteUnavailableError as exc:
            return str(exc)
        except (ValueError, KeyError, TypeError) as exc:
            return f"the remote qtask {self._url} sent an unreadable GET /backends: {exc}"
        return "ok"

    def _read_capabilities(self, body: dict[str, Any]) -> BackendCapabilities:
        wanted = self._settings.remote_backend or body["default"]
        found = next(b for b in body["backends"] if b["name"] == wanted)
        coupling = found.get("coupling_map")
        basis = found.get("basis_gates")
        return BackendCapabilities(
            name=self._name,
            type="qtask",
            kind=BackendKind.REMOTE,
            max_qubits={str(k): int(v) for k, v in found["max_qubits"].items()},
            max_shots=int(found["max_shots"]),
            device_qubits=int(found["num_qubits"]) if coupling else None,
            basis_gates=None if basis is None else tuple(basis),
            coupling_map=None if coupling is None else tuple((a, b) for a, b in coupling),
            noise=found.get("noise"),
            memory=bool(found.get("memory", False)),
            seeds=bool(found.get("seeds", False)),
            cancel=True,
        )

    async def submit(self, task: Task) -> str:
        """POST /tasks with the task id as Idempotency-Key; the remote task's id."""
        body: dict[str, object] = {"qc": task.source, "shots": task.shots}
        if task.seed is not None:
            body["seed"] = task.seed
        if task.memory:
            body["memory"] = True
        if self._settings.remote_backend is not None:
            body["backend"] = self._settings.remote_backend
        response = await self._call(
            "POST", "/tasks", json=body, headers={"Idempotency-Key": task.id}
        )
        if response.status_code >= 400:
            raise RemoteRejectedError(
                f"The remote qtask refused the task: {response_message(response)}"
            )
        return str(response.json()["task_id"])

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        """GET /tasks?ids=... for at most MAX_IDS_PER_READ jobs."""
        if not job_ids:
            return {}
        response = await self._call("GET", "/tasks", params={"ids": ",".join(job_ids)})
        if response.status_code != 200:
            raise RemoteUnavailableError(
                f"the remote qtask {self._url} answered {response.status_code}: "
                f"{response_message(response)}"
            )
        return {item["task_id"]: _status(item) for item in response.json()["tasks"]}

    async def cancel(self, job_id: str) -> None:
        """DELETE /tasks/{id}; a task that already ended there answers 409, which is fine."""
        await self._call("DELETE", f"/tasks/{job_id}")


def _status(item: dict[str, Any]) -> RemoteStatus:
    state = provider_state("qtask", str(item.get("status")))
    if state is RemoteState.DONE:
        return RemoteStatus(state, counts=item["result"], memory=item.get("memory"))
    if state is RemoteState.ERROR:
        return RemoteStatus(state, message=f"The remote qtask: {item.get('message')}")
    return RemoteStatus(state)
