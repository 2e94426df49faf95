"""The coordinator's job runtime (FR-006, FR-007, FR-010): drive each job from QUEUED to an end.

COMPILING: the OpenQASM (already checked at submission by qtask's own ingestion) becomes the
IR, and the planner (qtask.mesh.planner.plan_job, or the `planner_hook`) a DAG of fragments
(dag.JobPlan), kept beside the database before anything runs. Then each fragment runs once its
dependencies are done (independent ones at once): RESERVE on its node (`reserve_timeout_s`;
a refusal tries the next node of [node, *fallbacks], and when all refused, the job waits for
the earliest `next_window`, or until one of them advertises a free slot), then EXECUTE with
the joined input state (`execute_timeout_s`, plus `transfer_timeout_s` when a state travels).
A failure (timeout, unreachable peer, an error reply) is retried after a bounded exponential
backoff with jitter on the next node that has not failed it; after `max_attempts`, or with no
node left, the job is re-planned without the failed nodes (the fragment must keep its slice);
no feasible plan: the job FAILS at once with the fragment-level error. A fragment's output
state is kept on disk (dag.StateFiles) with its completed record; the measuring fragment(s)'
counts, combined, complete the job with its metadata (route, transfers, time per stage). The
coordinator never simulates.

Every change is written to the database before it is acted on (a reservation is recorded as
requested before the request leaves), so a coordinator killed at any moment restarts from what
it wrote: `recover()` marks attempts that were in flight `abandoned`, releases their
reservations (best effort: the node expires them anyway) and drives the job again from the
kept plan, skipping fragments whose completed record and state file both exist.

Cancel (DELETE /api/v1/jobs/{id}): the job's drive is stopped where it waits, its attempts in
flight end `failed` ("cancelled") with their reservations released, and the job ends FAILED
with the error "cancelled" (FR-009's six states are kept: a cancelled job is a failed one).
A fragment already running on a node runs to its end there; its counts are never read. A
reservation is good for one run: the node frees it when the run ends (a release that arrives
during the run takes effect then), so a completed fragment sends no release.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, cast

import structlog

from qtask.errors import CircuitError, InvalidRequestError, QTaskError
from qtask.logs import get_logger
from qtask.mesh import coord_metrics as metrics
from qtask.mesh import planner
from qtask.mesh.attempts import (
    FragmentAttempts,
    JobRecords,
    _DagRun,
    _FragmentFailedError,
    _measured_clbits,
    _ms,
    _NewPlanError,
)

# MeshPort and PlanJob are re-exported: the pinger and the coordinator import them from here.
from qtask.mesh.attempts import MeshPort as MeshPort
from qtask.mesh.attempts import PlanJob as PlanJob
from qtask.mesh.config import CoordinatorSettings
from qtask.mesh.dag import FragmentSpec, JobPlan, StateFiles
from qtask.mesh.handoff import State, combine_counts, join
from qtask.mesh.jobs import FragmentStatus, Job, JobState
from qtask.mesh.planner import PlanInfeasibleError
from qtask.mesh.protocol import (
    CircuitIR,
)
from qtask.mesh.registry import Registry

log = get_logger("mesh.runtime")

# How often a job waiting for a feasible node looks at the registry again.
_PLAN_POLL_S = 0.1


# A cancelled job's error, and its attempts' (FAILED with this reason: see Runtime.cancel).
CANCELLED = "cancelled"


class JobNotFoundError(QTaskError):
    """Raised when no mesh job has the given id."""


class JobConflictError(InvalidRequestError):
    """Raised when a job's state does not allow the request: cancelling an ended job."""

    status_code = 409


Compile = Callable[[str], CircuitIR]


class Runtime(FragmentAttempts):
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
        states: StateFiles | None = None,
        plan_job: PlanJob | None = None,
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
        self._states = states
        self._plan_job = plan_job
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
        nothing new is started)."""
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
        started = time.monotonic()
        if job.state in (JobState.QUEUED, JobState.COMPILING):
            job = await self._set(job, JobState.COMPILING)
        try:
            circuit = await asyncio.to_thread(self._compile, job.qasm)
        except CircuitError as exc:
            await self._fail(job, "invalid_circuit", str(exc))
            return
        compiled = time.monotonic()
        plan = None if self._states is None else self._states.load_plan(job.id)
        if plan is None:
            plan = await self._first_plan(job, circuit)
            if plan is None:
                return
            if self._states is not None:
                self._states.save_plan(plan)
        if job.state is JobState.COMPILING:
            job = await self._set(job, JobState.RESERVING)
        run = _DagRun(plan, circuit, {"compile_ms": _ms(compiled - started),
                                      "plan_ms": _ms(time.monotonic() - compiled)})  # fmt: skip
        await self._run_dag(self.job(job.id), run)

    async def _first_plan(self, job: Job, circuit: CircuitIR) -> JobPlan | None:
        """The job's plan, waiting up to `plan_wait_s` for nodes to advertise; None when no
        plan is feasible (the job has then FAILED with the planner's reason)."""
        deadline = self._clock() + self._settings.plan_wait_s
        while True:
            now = self._clock()
            try:
                plan = self._plan(job.id, circuit, frozenset(), job.min_fidelity)
            except PlanInfeasibleError as exc:
                if now < deadline:
                    # Nodes not yet heard from (a fresh or restarted coordinator) may advertise.
                    await asyncio.sleep(_PLAN_POLL_S)
                    continue
                await self._store.add_decision(job.id, f"{job.id}.f0", 1, None, now, str(exc),
                                               self._registry.snapshot(now))  # fmt: skip
                await self._fail(self.job(job.id), "infeasible", str(exc))
                return None
            snapshot = self._registry.snapshot(now)
            for fragment in plan.fragments:
                await self._store.add_decision(
                    job.id, fragment.fragment_id, 1, fragment.node_id, now,
                    f"planned ({len(plan.fragments)} fragments); fallbacks "
                    f"{list(fragment.fallbacks)}", snapshot,
                )  # fmt: skip
            return plan

    def _plan(
        self, job_id: str, circuit: CircuitIR, exclude: frozenset[str], min_fidelity: float
    ) -> JobPlan:
        """The job's plan without `exclude` (PlanInfeasibleError with the reason): the
        planner's cost model on the registry's snapshot, or the `planner_hook`."""
        now = self._clock()
        if self._plan_job is not None:
            return self._plan_job(self._registry, now, job_id, circuit, exclude, min_fidelity)
        job = self.job(job_id)
        plan = planner.plan_job(
            job_id, circuit, self._registry.snapshot(now), self._settings.planner,
            seed=job.seed or 0, exclude=exclude, min_fidelity=min_fidelity, shots=job.shots,
        )  # fmt: skip
        return JobPlan.from_plan(plan, circuit)

    async def _run_dag(self, job: Job, run: _DagRun) -> None:
        """Run every fragment once its dependencies are done (independent ones at once); a
        re-plan that cuts the circuit differently starts the DAG again on the new plan."""
        done = self._resumable(job, run)
        while True:
            try:
                done = await self._run_fragments(job.id, run, done)
                break
            except _FragmentFailedError as exc:
                await self._fail(self.job(job.id), exc.reason, str(exc))
                return
            except _NewPlanError as exc:
                log.warning("mesh_job_replanned", fragments=len(exc.plan.fragments))
                run.plan, done = exc.plan, {}
                if self._states is not None:
                    self._states.delete(job.id)  # the old cut's states fit no new fragment
                    self._states.save_plan(exc.plan)
        plan = run.plan
        parts = [(done[f.fragment_id], _measured_clbits(f)) for f in plan.fragments if f.measure]
        counts = combine_counts(parts, plan.num_clbits, self.job(job.id).seed, plan.cregs)
        metadata = run.metadata()
        job = await self._set(self.job(job.id), JobState.COMPLETED, counts=counts,
                              metadata=metadata)  # fmt: skip
        if self._states is not None:
            self._states.delete(job.id)
        self._finished(job, "completed", "ok")

    def _resumable(self, job: Job, run: _DagRun) -> dict[str, Any]:
        """FR-010: fragments done before a restart (completed record and state file both
        kept), with their output states; they are not run again."""
        done: dict[str, Any] = {}
        completed = {f.fragment_id for f in job.fragments if f.status is FragmentStatus.COMPLETED}
        for spec in run.plan.fragments:
            if spec.measure or spec.fragment_id not in completed or self._states is None:
                continue
            state = self._states.load_state(job.id, spec.fragment_id)
            if state is not None:
                done[spec.fragment_id] = state
                run.resumed.append(spec.fragment_id)
        if run.resumed:
            log.info("mesh_job_resumed", fragments=run.resumed)
        return done

    async def _run_fragments(
        self, job_id: str, run: _DagRun, done: dict[str, Any]
    ) -> dict[str, Any]:
        """Each fragment's result (state or counts); the first fragment error cancels the
        others and is raised."""
        plan = run.plan
        running: dict[asyncio.Task[Any], str] = {}
        try:
            while len(done) < len(plan.fragments):
                for spec in plan.ready(done, running.values()):
                    work = self._run_fragment(job_id, run, spec, self._input(plan, spec, done))
                    running[asyncio.ensure_future(work)] = spec.fragment_id
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    fragment_id = running.pop(task)
                    done[fragment_id] = task.result()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        return done

    def _input(self, plan: JobPlan, spec: FragmentSpec, done: dict[str, Any]) -> State | None:
        """The joined output states of the fragment's dependencies (None: start at |0..0>)."""
        if not spec.depends_on:
            return None
        parts = [(plan.fragment(d).qubits, done[d]) for d in spec.depends_on]
        if len(parts) == 1 and tuple(parts[0][0]) == spec.qubits:
            return cast(State, parts[0][1])
        return join(parts, spec.qubits)

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
