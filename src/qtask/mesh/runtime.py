"""The coordinator's job runtime (FR-006, FR-007, FR-010): drive each job from QUEUED to an end.

COMPILING: the OpenQASM (already checked at submission by qtask's own ingestion) becomes the
IR and one fragment (qtask.mesh.planner). RESERVING: the best candidate node in the registry is
asked for a window (RESERVE_PROTOCOL, `reserve_timeout_s`); a refusal tries the next candidate,
and when every candidate refuses, the job waits for the earliest `next_window` offered.
EXECUTING: EXECUTE_PROTOCOL (`execute_timeout_s`); a failure (timeout, unreachable peer, an
error reply) is retried after a bounded exponential backoff with jitter, on another feasible
node when there is one, up to `max_attempts`; then the job FAILS with each attempt's error.
The coordinator never simulates: counts come from the node that the fragment record names.

Every change is written to the database before it is acted on (a reservation is recorded as
requested before the request leaves), so a coordinator killed at any moment restarts from what
it wrote: `recover()` marks attempts that were in flight `abandoned`, releases their
reservations (best effort: the node expires them anyway) and drives the job again.

Cancel (DELETE /api/v1/jobs/{id}): the job's drive is stopped where it waits, its attempts in
flight end `failed` ("cancelled") with their reservations released, and the job ends FAILED
with the error "cancelled" (FR-009's six states are kept: a cancelled job is a failed one).
A fragment already running on a node runs to its end there; its counts are never read.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Protocol

import structlog

from qtask.errors import CircuitError, InvalidRequestError, QTaskError
from qtask.logs import get_logger
from qtask.mesh import coord_metrics as metrics
from qtask.mesh import planner
from qtask.mesh.config import CoordinatorSettings
from qtask.mesh.jobs import Fragment, FragmentStatus, Job, JobState
from qtask.mesh.protocol import (
    EXECUTE_PROTOCOL,
    RESERVE_PROTOCOL,
    CircuitIR,
    ExecuteReply,
    ExecuteRequest,
    ReserveReply,
    ReserveRequest,
)
from qtask.mesh.registry import Registry

log = get_logger("mesh.runtime")

# How often a job waiting for a feasible node looks at the registry again.
_PLAN_POLL_S = 0.1
# A reservation release is a courtesy (the node expires it anyway): it gets this long.
_RELEASE_TIMEOUT_S = 2.0


# A cancelled job's error, and its attempts' (FAILED with this reason: see Runtime.cancel).
CANCELLED = "cancelled"


class JobNotFoundError(QTaskError):
    """Raised when no mesh job has the given id."""


class JobConflictError(InvalidRequestError):
    """Raised when a job's state does not allow the request: cancelling an ended job."""

    status_code = 409


class MeshPort(Protocol):
    """What the runtime needs of the libp2p host (qtask.mesh.host.MeshHost)."""

    @property
    def peer_id(self) -> str: ...

    async def request(
        self, peer_id: str, protocol_id: str, data: bytes, *, timeout: float
    ) -> bytes: ...

    async def publish(self, topic: str, data: bytes) -> None: ...


class JobRecords(Protocol):
    """What the runtime writes and reads (qtask.mesh.store.MeshStore; InMemoryMeshStore)."""

    async def save_job(self, job: Job) -> None: ...

    async def create_job(self, job: Job, max_pending: int = 0) -> Job: ...

    async def save_fragment(self, job_id: str, fragment: Fragment) -> None: ...

    def job(self, job_id: str) -> Job | None: ...

    def unfinished_jobs(self) -> list[Job]: ...

    async def add_reservation_event(
        self,
        reservation_id: str,
        node_id: str,
        job_id: str | None,
        kind: str,
        at: float,
        detail: dict[str, Any] | None = None,
    ) -> None: ...

    async def add_decision(
        self,
        job_id: str,
        fragment_id: str,
        attempt: int,
        node_id: str | None,
        at: float,
        reason: str,
        snapshot: dict[str, object],
    ) -> None: ...


Compile = Callable[[str], CircuitIR]


# Node error codes that no other node would answer differently: the job fails at once (a
# deterministic failure retried with backoff only delays its answer).
FINAL_CODES = frozenset({"invalid_circuit", "bad_request"})


class _AttemptFailedError(Exception):
    def __init__(self, reason: str, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.final = final


class Runtime:
    """Jobs: submission, the drive of each to its end, reads and waits, and recovery."""

    def __init__(
        self,
        store: JobRecords,
        registry: Registry,
        mesh: MeshPort,
        settings: CoordinatorSettings,
        compile_circuit: Compile,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_pending_per_owner: int = 0,
    ) -> None:
        """`max_pending_per_owner`: jobs one API key may have unfinished (0: no cap), as
        qtask's `auth.max_pending_tasks` for tasks."""
        self._store = store
        self._max_pending = max_pending_per_owner
        self._registry = registry
        self._mesh = mesh
        self._settings = settings
        self._compile = compile_circuit
        self._clock = clock
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed: dict[str, asyncio.Event] = {}
        self._drives: dict[str, asyncio.Task[None]] = {}  # job id -> the task driving it
        self._cancelling = asyncio.Lock()
        self._stopping = False

    # Reads.

    def job(self, job_id: str) -> Job:
        """The job as stored; JobNotFoundError if there is none."""
        job = self._store.job(job_id)
        if job is None:
            raise JobNotFoundError(f"No job has the id {job_id!r}.")
        return job

    async def wait(self, job_id: str, timeout: float) -> Job:
        """The job once it changes, or after `timeout` seconds as it is then."""
        job = self.job(job_id)
        if not job.state.terminal:
            event = self._changed.setdefault(job_id, asyncio.Event())
            job = self.job(job_id)  # a change between the first read and the event is seen
            if job.state.terminal:
                return job
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                pass
        return self.job(job_id)

    def active(self) -> int:
        """Jobs being driven by this process now."""
        return len(self._tasks)

    # Submission, recovery, shutdown.

    async def submit(
        self,
        qasm: str,
        shots: int,
        seed: int | None,
        min_fidelity: float,
        owner: str | None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Store a checked circuit as a QUEUED job and start driving it; return at once.

        With an `idempotency_key` the owner used before, the job stored then is returned (and
        nothing new is started). PendingCapError when the owner is at its cap of unfinished
        jobs."""
        now = self._clock()
        new = Job(uuid.uuid4().hex, JobState.QUEUED, qasm, shots, seed, min_fidelity, now, now,
                  owner=owner, idempotency_key=idempotency_key)  # fmt: skip
        job = await self._store.create_job(new, self._max_pending)
        if job.id != new.id:
            log.info("mesh_job_resubmitted", job_id=job.id)
            return job
        metrics.JOBS_SUBMITTED.inc()
        log.info("mesh_job_submitted", job_id=job.id, shots=shots, min_fidelity=min_fidelity)
        self._spawn(job)
        return job

    async def recover(self) -> int:
        """Drive every unfinished job of a previous run to its end; how many there were."""
        jobs = self._store.unfinished_jobs()
        now = self._clock()
        for job in jobs:
            for fragment in job.fragments:
                if fragment.status.in_flight:
                    abandoned = replace(
                        fragment,
                        status=FragmentStatus.ABANDONED,
                        end=now,
                        error="the coordinator restarted while this attempt was in flight",
                    )
                    await self._store.save_fragment(job.id, abandoned)
                    if fragment.reservation_id is not None:
                        self._background(self._release(job.id, fragment))
            log.warning("mesh_job_recovered", job_id=job.id, state=job.state.value)
            self._spawn(self.job(job.id))
        return len(jobs)

    async def drain(self) -> None:
        """Wait until every job and release this process is working on has ended."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def stop(self) -> None:
        """Stop driving jobs; they stay in the database as they are, for the next start."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def cancel(self, job_id: str) -> Job:
        """End an unfinished job at once: FAILED with the error "cancelled" (see the module
        docstring). Cancelling a cancelled job answers it again; a job that ended otherwise
        raises JobConflictError."""
        async with self._cancelling:  # two cancels of one job: the second sees it ended
            job = self.job(job_id)
            if not job.state.terminal:
                drive = self._drives.pop(job_id, None)
                if drive is not None and not drive.done():
                    drive.cancel()
                    await asyncio.wait([drive])  # its writes are queued before ours
                job = self.job(job_id)
            if job.state.terminal:
                if job.state is JobState.FAILED and job.error == CANCELLED:
                    return job
                raise JobConflictError(f"The job already ended ({job.state.value}).")
            now = self._clock()
            for fragment in job.fragments:
                if fragment.status.in_flight:
                    ended = replace(fragment, status=FragmentStatus.FAILED, end=now,
                                    error=CANCELLED)  # fmt: skip
                    await self._store.save_fragment(job.id, ended)
                    if fragment.reservation_id is not None:
                        self._background(self._release(job.id, fragment))
            await self._fail(self.job(job_id), CANCELLED, CANCELLED)
            log.info("mesh_job_cancelled", job_id=job_id, was=job.state.value)
            return self.job(job_id)

    def _spawn(self, job: Job) -> None:
        task = self._background(self._drive(job))
        self._drives[job.id] = task
        task.add_done_callback(lambda _: self._forget_drive(job.id, task))

    def _forget_drive(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._drives.get(job_id) is task:
            del self._drives[job_id]

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # The drive.

    async def _drive(self, job: Job) -> None:
        with structlog.contextvars.bound_contextvars(job_id=job.id):
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the job ends with the error, never silently
                log.exception("mesh_job_crashed")
                current = self.job(job.id)
                if not current.state.terminal:
                    await self._fail(current, "internal", f"internal error: {exc}")

    async def _run(self, job: Job) -> None:
        if job.state in (JobState.QUEUED, JobState.COMPILING):
            job = await self._set(job, JobState.COMPILING)
        try:
            circuit = await asyncio.to_thread(self._compile, job.qasm)
        except CircuitError as exc:
            await self._fail(job, "invalid_circuit", str(exc))
            return
        fragment = planner.plan(job.id, circuit)
        if job.state is not JobState.RESERVING:
            job = await self._set(job, JobState.RESERVING)
        await self._execute_fragment(job, fragment)

    async def _execute_fragment(self, job: Job, fragment: planner.FragmentPlan) -> None:
        settings = self._settings
        attempt = max((f.attempt for f in job.fragments), default=0)
        failures: list[str] = []
        failed_nodes: set[str] = set()
        refused: dict[str, tuple[float, float] | None] = {}  # node -> the window it offered
        while len(failures) < settings.max_attempts:
            avoid = frozenset(failed_nodes | refused.keys())
            node = await self._choose(job, fragment, attempt + 1, avoid)
            if node is None:
                return
            if node in refused:
                # Every candidate refused: wait for the earliest window offered (bounded), then
                # ask again. A whole round of refusals counts as one failed attempt.
                windows = [w[0] for w in refused.values() if w is not None]
                wait = min(windows, default=self._clock()) - self._clock()
                failures.append(f"every candidate refused a reservation ({len(refused)} nodes)")
                metrics.FRAGMENT_FAILURES.labels("rejected").inc()
                refused.clear()
                await asyncio.sleep(min(max(wait, self._backoff(len(failures))),
                                        settings.reservation_hold_s))  # fmt: skip
                continue
            attempt += 1
            if failures or refused:
                metrics.RETRIES.inc()
            with structlog.contextvars.bound_contextvars(
                fragment_id=fragment.fragment_id, attempt=attempt, node=node
            ):
                try:
                    reservation, window = await self._reserve(job, fragment, attempt, node)
                    if reservation is None:
                        refused[node] = window
                        job = self.job(job.id)
                        continue  # the next candidate
                    job = await self._set(self.job(job.id), JobState.EXECUTING)
                    counts = await self._execute(job, fragment, reservation)
                except _AttemptFailedError as exc:
                    metrics.FRAGMENT_FAILURES.labels(exc.reason).inc()
                    failures.append(f"attempt {attempt} on {node}: {exc}")
                    failed_nodes.add(node)
                    log.warning("mesh_fragment_failed", reason=exc.reason, error=str(exc))
                    if exc.final:
                        await self._fail(self.job(job.id), "invalid_circuit", failures[-1])
                        return
                    job = self.job(job.id)
                    if job.state is JobState.EXECUTING:
                        job = await self._set(job, JobState.RESERVING)
                    if len(failures) < settings.max_attempts:
                        await asyncio.sleep(self._backoff(len(failures)))
                    continue
            job = await self._set(self.job(job.id), JobState.COMPLETED, counts=counts)
            self._finished(job, "completed", "ok")
            return
        await self._fail(
            self.job(job.id),
            "attempts",
            f"fragment {fragment.fragment_id} failed {len(failures)} times: " + "; ".join(failures),
        )

    async def _choose(
        self, job: Job, fragment: planner.FragmentPlan, attempt: int, failed: frozenset[str]
    ) -> str | None:
        """The node for the next attempt, with the decision recorded; None when none is
        feasible within `plan_wait_s` (the job has then FAILED with the reason)."""
        deadline = self._clock() + self._settings.plan_wait_s
        while True:
            now = self._clock()
            found = planner.candidates(
                self._registry, fragment, now, min_fidelity=job.min_fidelity, exclude=failed
            )
            if found:
                node = found[0].node_id
                await self._store.add_decision(
                    job.id, fragment.fragment_id, attempt, node, now,
                    f"best of {len(found)} candidates", self._registry.snapshot(now),
                )  # fmt: skip
                return node
            if now >= deadline:
                reason = planner.infeasible(self._registry, fragment, now, job.min_fidelity)
                await self._store.add_decision(
                    job.id, fragment.fragment_id, attempt, None, now, reason,
                    self._registry.snapshot(now),
                )  # fmt: skip
                await self._fail(self.job(job.id), "infeasible", reason)
                return None
            # Nodes not yet heard from (a fresh or restarted coordinator) may advertise soon.
            await asyncio.sleep(_PLAN_POLL_S)

    async def _reserve(
        self, job: Job, fragment: planner.FragmentPlan, attempt: int, node: str
    ) -> tuple[str | None, tuple[float, float] | None]:
        """(the reservation id, None), or (None, the next window offered) when the node
        refused; _AttemptFailedError when the node could not be asked."""
        settings = self._settings
        now = self._clock()
        reservation_id = uuid.uuid4().hex
        request = ReserveRequest(
            correlation_id=f"{job.id}:{attempt}",
            reservation_id=reservation_id,
            job_id=job.id,
            fragment_id=fragment.fragment_id,
            gates=tuple(sorted(fragment.gates)),
            num_qubits=fragment.num_qubits,
            window_start=now,
            window_end=now + settings.reservation_hold_s,
            min_fidelity=job.min_fidelity,
        )
        record = Fragment(fragment.fragment_id, attempt, node, FragmentStatus.RESERVING,
                          reservation_id)  # fmt: skip
        await self._store.save_fragment(job.id, record)
        await self._store.add_reservation_event(
            reservation_id, node, job.id, "requested", now,
            {"window": [request.window_start, request.window_end]},
        )  # fmt: skip
        raw = await self._call(node, RESERVE_PROTOCOL, request.model_dump_json().encode(),
                               settings.reserve_timeout_s, job, record)  # fmt: skip
        reply = ReserveReply.model_validate_json(raw)
        now = self._clock()
        if reply.ok:
            await self._store.add_reservation_event(reservation_id, node, job.id, "accepted", now)
            await self._store.save_fragment(job.id, replace(record, status=FragmentStatus.RESERVED))
            return reservation_id, None
        reason = reply.error.message if reply.error else "refused"
        await self._store.add_reservation_event(
            reservation_id, node, job.id, "rejected", now,
            {"reason": reason, "next_window": reply.next_window},
        )  # fmt: skip
        await self._store.save_fragment(
            job.id, replace(record, status=FragmentStatus.FAILED, end=now,
                            error=f"reservation refused: {reason}"),
        )  # fmt: skip
        metrics.FRAGMENT_FAILURES.labels("rejected").inc()
        log.info("mesh_reservation_refused", reason=reason, next_window=reply.next_window)
        return None, reply.next_window

    async def _execute(
        self, job: Job, fragment: planner.FragmentPlan, reservation_id: str
    ) -> dict[str, int]:
        record = next(f for f in self.job(job.id).fragments if f.reservation_id == reservation_id)
        started = replace(record, status=FragmentStatus.EXECUTING, start=self._clock())
        await self._store.save_fragment(job.id, started)
        request = ExecuteRequest(
            correlation_id=f"{job.id}:{record.attempt}",
            job_id=job.id,
            fragment_id=fragment.fragment_id,
            reservation_id=reservation_id,
            circuit=fragment.circuit,
            shots=job.shots,
            seed=job.seed,
        )
        raw = await self._call(record.node_id, EXECUTE_PROTOCOL,
                               request.model_dump_json().encode(),
                               self._settings.execute_timeout_s, job, started)  # fmt: skip
        reply = ExecuteReply.model_validate_json(raw)
        now = self._clock()
        if not reply.ok or reply.counts is None:
            error = reply.error.message if reply.error else "the node returned no counts"
            code = reply.error.code if reply.error else "no_counts"
            await self._store.save_fragment(
                job.id, replace(started, status=FragmentStatus.FAILED, end=now,
                                error=f"{code}: {error}"),
            )  # fmt: skip
            self._background(self._release(job.id, started))
            raise _AttemptFailedError("node_error", f"{code}: {error}", final=code in FINAL_CODES)
        await self._store.save_fragment(
            job.id, replace(started, status=FragmentStatus.COMPLETED, end=now)
        )
        await self._store.add_reservation_event(reservation_id, record.node_id, job.id,
                                                "used", now, {"run_s": reply.run_s})  # fmt: skip
        # The node keeps the window until its end unless told: give the slot back now.
        self._background(self._release(job.id, started))
        log.info("mesh_fragment_completed", node=record.node_id, run_s=reply.run_s)
        return reply.counts

    async def _call(
        self, node: str, protocol: str, data: bytes, timeout: float, job: Job, record: Fragment
    ) -> bytes:
        """One request; a transport failure is recorded on the attempt and raised as
        _AttemptFailedError."""
        try:
            return await self._mesh.request(node, protocol, data, timeout=timeout)
        except (QTaskError, TimeoutError, OSError) as exc:
            reason = (
                "timeout"
                if "timeout" in type(exc).__name__.lower() or isinstance(exc, TimeoutError)
                else "unreachable"
            )
            message = f"{protocol} to {node}: {type(exc).__name__}: {exc}".rstrip(": ")
            await self._store.save_fragment(
                job.id, replace(record, status=FragmentStatus.FAILED, end=self._clock(),
                                error=message),
            )  # fmt: skip
            raise _AttemptFailedError(reason, message) from exc

    async def _release(self, job_id: str, fragment: Fragment) -> None:
        if fragment.reservation_id is None:
            return
        request = ReserveRequest(
            action="release",
            correlation_id=f"{job_id}:{fragment.attempt}:release",
            reservation_id=fragment.reservation_id,
            job_id=job_id,
            fragment_id=fragment.fragment_id,
        )
        try:
            await self._mesh.request(fragment.node_id, RESERVE_PROTOCOL,
                                     request.model_dump_json().encode(),
                                     timeout=_RELEASE_TIMEOUT_S)  # fmt: skip
            kind = "released"
        except (QTaskError, TimeoutError, OSError):
            kind = "release_failed"  # the node expires it at the window's end
        await self._store.add_reservation_event(
            fragment.reservation_id, fragment.node_id, job_id, kind, self._clock()
        )

    def _backoff(self, failures: int) -> float:
        """Bounded exponential backoff with jitter: half fixed, half random."""
        settings = self._settings
        cap = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (failures - 1))
        return float(cap / 2 + self._rng.uniform(0, cap / 2))

    # State changes: persisted, then announced.

    async def _set(self, job: Job, state: JobState, **changes: object) -> Job:
        new = job.advance(state, self._clock(), **changes)
        await self._store.save_job(new)
        log.info("mesh_job_state", state=state.value)
        self._announce(new.id)
        return self.job(new.id)

    async def _fail(self, job: Job, reason: str, error: str) -> None:
        job = await self._set(job, JobState.FAILED, error=error)
        self._finished(job, "failed", reason)

    def _finished(self, job: Job, outcome: str, reason: str) -> None:
        metrics.JOBS_FINISHED.labels(outcome, reason).inc()
        metrics.JOB_SECONDS.observe(max(0.0, job.updated_at - job.created_at))
        log.info("mesh_job_finished", outcome=outcome, reason=reason, error=job.error)

    def _announce(self, job_id: str) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()
