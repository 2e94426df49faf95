"""The `mesh` remote backend: a `qtask coordinator` (the 004 seed's mesh), over its FR-009 API.

submit = POST /api/v1/circuits/submit with `Idempotency-Key: <task id>` (a retried submission
gets the same job back) and the configured `min_fidelity` constraint; statuses = GET
/api/v1/jobs/{id}, one job per call (the coordinator has no batch read); cancel = DELETE
/api/v1/jobs/{id} (the job ends FAILED "cancelled" there, its reservations released): a
`DELETE /tasks/{id}` here, or a job past `remote_timeout_s`, reaches the coordinator.
Capabilities are the widest fragment an available node takes, read from GET /api/v1/nodes at
each health check. The circuit travels as the OpenQASM the user sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from qtask.config import LimitsSettings
from qtask.config_backends import MeshBackendSettings
from qtask.domain.backends import BackendCapabilities, BackendKind
from qtask.domain.remote import RemoteState, RemoteStatus, provider_state
from qtask.domain.task import Task
from qtask.errors import RemoteRejectedError, RemoteUnavailableError
from qtask.execution.remote_http import HEALTH_TIMEOUT_S, HttpRemote, response_message
from qtask.logs import get_logger

log = get_logger("remote_mesh")


class MeshRemoteBackend(HttpRemote[MeshBackendSettings]):
    """A `qtask coordinator` as a RemoteBackend (domain.remote)."""

    _peer = "the mesh coordinator"

    def __init__(
        self,
        name: str,
        settings: MeshBackendSettings,
        limits: LimitsSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._name = name
        self._open_http(settings, transport)
        self._limits = limits
        self._capabilities = self._with_qubits(limits.max_qubits)

    def _with_qubits(self, qubits: int) -> BackendCapabilities:
        return BackendCapabilities(
            name=self._name,
            type="mesh",
            kind=BackendKind.REMOTE,
            max_qubits={"mesh": qubits},
            max_shots=min(self._limits.max_shots, 1_000_000),
            memory=False,
            seeds=True,
            cancel=True,
        )

    @property
    def status_batch(self) -> int:
        """GET /api/v1/jobs/{id} reads one job."""
        return 1

    async def health(self) -> str:
        """ "ok" (capabilities refreshed from the available nodes), or why not."""
        try:
            response = await self._call(
                "GET", "/api/v1/nodes", params={"available": "true"}, timeout=HEALTH_TIMEOUT_S
            )
            if response.status_code != 200:
                return f"the mesh coordinator {self._url} answered {response.status_code}"
            nodes = response.json()["nodes"]
        except RemoteUnavailableError as exc:
            return str(exc)
        except (ValueError, KeyError, TypeError) as exc:
            return f"the mesh coordinator {self._url} sent an unreadable node list: {exc}"
        usable = [int(n["qubit_range"][1]) for n in nodes if not n.get("degraded")]
        if not usable:
            return f"the mesh coordinator {self._url} has no available node"
        self._capabilities = self._with_qubits(min(max(usable), self._limits.max_qubits))
        return "ok"

    async def submit(self, task: Task) -> str:
        """POST /api/v1/circuits/submit with the task id as Idempotency-Key; the job's id."""
        body: dict[str, object] = {
            "qasm": task.source,
            "shots": task.shots,
            "constraints": {"min_fidelity": self._settings.min_fidelity},
        }
        if task.seed is not None:
            body["seed"] = task.seed
        response = await self._call(
            "POST", "/api/v1/circuits/submit", json=body, headers={"Idempotency-Key": task.id}
        )
        if response.status_code >= 400:
            raise RemoteRejectedError(f"The mesh refused the task: {response_message(response)}")
        return str(response.json()["job_id"])

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        """GET /api/v1/jobs/{id} of each job; an unknown job is left out."""
        found: dict[str, RemoteStatus] = {}
        for job_id in job_ids:
            response = await self._call("GET", f"/api/v1/jobs/{job_id}")
            if response.status_code == 404:
                continue
            if response.status_code != 200:
                raise RemoteUnavailableError(
                    f"the mesh coordinator {self._url} answered {response.status_code}: "
                    f"{response_message(response)}"
                )
            found[job_id] = _status(response.json())
        return found

    async def cancel(self, job_id: str) -> None:
        """DELETE /api/v1/jobs/{id}. A job that already ended (409) or is gone (404) needs
        nothing more; any other refusal is raised (the poller logs it)."""
        response = await self._call("DELETE", f"/api/v1/jobs/{job_id}")
        if response.status_code in (404, 409):
            log.info("mesh_cancel_after_end", job_id=job_id, status=response.status_code,
                     message=response_message(response))  # fmt: skip
            return
        if response.status_code >= 400:
            raise RemoteRejectedError(f"The mesh refused to cancel job {job_id}: "
                                      f"{response_message(response)}")  # fmt: skip
        log.info("mesh_job_cancelled", job_id=job_id)


def _status(body: dict[str, Any]) -> RemoteStatus:
    state = provider_state("mesh", str(body.get("state")))
    if state is RemoteState.DONE:
        return RemoteStatus(state, counts=body["counts"])
    if state is RemoteState.ERROR:
        return RemoteStatus(state, message=f"The mesh: {body.get('error')}")
    return RemoteStatus(state)
