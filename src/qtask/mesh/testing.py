"""In-memory fakes of the coordinator's ports, for unit tests only (no sockets, no files).

`FakeMesh` stands in for the libp2p host (qtask.mesh.host.MeshHost): each fake node answers
RESERVE, EXECUTE and PING with functions a test sets. `InMemoryMeshStore` stands in for the
SQLite MeshStore with the same methods. Integration and end-to-end tests use real node
processes and the real database, never these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from qtask.errors import PendingCapError, QTaskError
from qtask.mesh.jobs import Fragment, Job, JobState
from qtask.mesh.protocol import (
    EXECUTE_PROTOCOL,
    PING_PROTOCOL,
    RESERVE_PROTOCOL,
    Advert,
    ExecuteReply,
    ExecuteRequest,
    Ping,
    Pong,
    QualityReport,
    ReserveReply,
    ReserveRequest,
)


class FakePeerUnreachableError(QTaskError):
    """Raised by FakeMesh for a request to a node that is down (as the host raises its own)."""


Reserve = Callable[[ReserveRequest], Awaitable[ReserveReply]]
Execute = Callable[[ExecuteRequest], Awaitable[ExecuteReply]]


@dataclass
class FakeNode:
    """One fake node: what it answers, and what it was asked."""

    node_id: str
    reserve: Reserve | None = None
    execute: Execute | None = None
    down: bool = False
    ping_delay_s: float = 0.0
    requests: list[tuple[str, Any]] = field(default_factory=list)

    async def answer_reserve(self, request: ReserveRequest) -> ReserveReply:
        if self.reserve is not None:
            return await self.reserve(request)
        return ReserveReply(
            ok=True,
            correlation_id=request.correlation_id,
            reservation_id=request.reservation_id,
            node_id=self.node_id,
        )

    async def answer_execute(self, request: ExecuteRequest) -> ExecuteReply:
        if self.execute is not None:
            return await self.execute(request)
        # Counts that say which node made them: all shots on a bitstring of the node's id.
        width = max(1, request.circuit.num_clbits)
        key = format(sum(map(ord, self.node_id)) % (2**width), f"0{width}b")
        return ExecuteReply(
            ok=True,
            correlation_id=request.correlation_id,
            node_id=self.node_id,
            counts={key: request.shots},
        )


class FakeMesh:
    """A MeshPort whose peers are FakeNodes in this process."""

    def __init__(self, peer_id: str = "coordinator") -> None:
        self._peer_id = peer_id
        self.nodes: dict[str, FakeNode] = {}
        self.published: list[tuple[str, bytes]] = []

    @property
    def peer_id(self) -> str:
        """This host's peer id."""
        return self._peer_id

    def add(self, node: FakeNode) -> FakeNode:
        """Make `node` reachable."""
        self.nodes[node.node_id] = node
        return node

    def connected_peers(self) -> set[str]:
        """Nodes that are up."""
        return {node_id for node_id, node in self.nodes.items() if not node.down}

    async def request(
        self, peer_id: str, protocol_id: str, data: bytes, *, timeout: float
    ) -> bytes:
        """Dispatch to the fake node's answer, within `timeout` like the host."""
        node = self.nodes.get(peer_id)
        if node is None or node.down:
            raise FakePeerUnreachableError(f"peer {peer_id} is unreachable")
        async with asyncio.timeout(timeout):
            if protocol_id == RESERVE_PROTOCOL:
                reserve = ReserveRequest.model_validate_json(data)
                node.requests.append((protocol_id, reserve))
                return (await node.answer_reserve(reserve)).model_dump_json().encode()
            if protocol_id == EXECUTE_PROTOCOL:
                execute = ExecuteRequest.model_validate_json(data)
                node.requests.append((protocol_id, execute))
                return (await node.answer_execute(execute)).model_dump_json().encode()
            if protocol_id == PING_PROTOCOL:
                ping = Ping.model_validate_json(data)
                node.requests.append((protocol_id, ping))
                await asyncio.sleep(node.ping_delay_s)
                return Pong(nonce=ping.nonce, node_id=peer_id).model_dump_json().encode()
        raise FakePeerUnreachableError(f"peer {peer_id} does not speak {protocol_id}")

    async def publish(self, topic: str, data: bytes) -> None:
        """Keep what was published, for the test to read."""
        self.published.append((topic, data))


class InMemoryMeshStore:
    """MeshStore's methods over dicts and lists."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.fragments: dict[str, dict[tuple[str, int], Fragment]] = {}
        self.events: list[dict[str, Any]] = []
        self.advert_rows: dict[str, tuple[Advert, float]] = {}
        self.quality: list[tuple[QualityReport, float]] = []
        self.decision_rows: list[dict[str, Any]] = []

    async def close(self) -> None:
        """Nothing to close."""

    async def ping(self) -> None:
        """Always answers."""

    async def save_job(self, job: Job) -> None:
        """Keep the job (without its fragments, as the database does)."""
        self.jobs[job.id] = job

    async def create_job(self, job: Job, max_pending: int = 0) -> Job:
        """Insert, or the job already stored under the owner's idempotency key; PendingCapError
        past the owner's cap of unfinished jobs."""
        if job.idempotency_key is not None:
            for found in self.jobs.values():
                if (found.owner, found.idempotency_key) == (job.owner, job.idempotency_key):
                    return self.job(found.id) or found
        if max_pending > 0 and job.owner is not None:
            pending = sum(1 for j in self.jobs.values()
                          if j.owner == job.owner and not j.state.terminal)  # fmt: skip
            if pending >= max_pending:
                raise PendingCapError(job.owner, pending, max_pending)
        self.jobs[job.id] = job
        return job

    async def save_fragment(self, job_id: str, fragment: Fragment) -> None:
        """Keep one attempt."""
        self.fragments.setdefault(job_id, {})[(fragment.fragment_id, fragment.attempt)] = fragment

    def job(self, job_id: str) -> Job | None:
        """The job with its attempts in order."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        rows = self.fragments.get(job_id, {})
        return _with_fragments(job, tuple(rows[key] for key in sorted(rows)))

    def unfinished_jobs(self) -> list[Job]:
        """Jobs not ended, oldest first."""
        found = [self.job(j.id) for j in self.jobs.values() if not j.state.terminal]
        return sorted((j for j in found if j is not None), key=lambda j: j.created_at)

    def job_counts(self) -> dict[str, int]:
        """Jobs per state."""
        counts: dict[str, int] = {}
        for job in self.jobs.values():
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
        return counts

    async def add_reservation_event(
        self,
        reservation_id: str,
        node_id: str,
        job_id: str | None,
        kind: str,
        at: float,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append an event."""
        self.events.append(
            {"reservation_id": reservation_id, "node_id": node_id, "job_id": job_id,
             "kind": kind, "at": at, "detail": detail or {}}
        )  # fmt: skip

    def reservation_events(self, reservation_id: str | None = None) -> list[dict[str, Any]]:
        """Events in order."""
        return [e for e in self.events if reservation_id in (None, e["reservation_id"])]

    async def save_advert(self, advert: Advert, received_at: float) -> None:
        """Keep the node's latest advert."""
        self.advert_rows[advert.node_id] = (advert, received_at)

    def adverts(self) -> list[tuple[Advert, float]]:
        """Every node's latest advert."""
        return list(self.advert_rows.values())

    async def add_quality(self, report: QualityReport, received_at: float) -> None:
        """Append a report."""
        self.quality.append((report, received_at))

    async def add_decision(
        self,
        job_id: str,
        fragment_id: str,
        attempt: int,
        node_id: str | None,
        at: float,
        reason: str,
        snapshot: dict[str, object],
    ) -> None:
        """Append a decision."""
        self.decision_rows.append(
            {"job_id": job_id, "fragment_id": fragment_id, "attempt": attempt,
             "node_id": node_id, "at": at, "reason": reason, "snapshot": snapshot}
        )  # fmt: skip

    def decisions(self, job_id: str) -> list[dict[str, Any]]:
        """A job's decisions in order."""
        return [d for d in self.decision_rows if d["job_id"] == job_id]


def _with_fragments(job: Job, fragments: tuple[Fragment, ...]) -> Job:
    from dataclasses import replace

    return replace(job, fragments=fragments)


__all__ = ["FakeMesh", "FakeNode", "FakePeerUnreachableError", "InMemoryMeshStore", "JobState"]
