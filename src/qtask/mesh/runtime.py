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
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Protocol, cast

import structlog

from qtask.errors import CircuitError, QTaskError
from qtask.logs import get_logger
from qtask.mesh import coord_metrics as metrics
from qtask.mesh import planner
from qtask.mesh.config import CoordinatorSettings
from qtask.mesh.dag import FragmentSpec, JobPlan, StateFiles
from qtask.mesh.handoff import State, combine_counts, decode_state, encode_state, join
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


class JobNotFoundError(QTaskError):
    """Raised when no mesh job has the given id."""


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

    async def create_job(self, job: Job) -> Job: ...

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
        states: StateFiles | None = None,
        plan_job: PlanJob | None = None,
    ) -> None:
        self._store = store
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
        job = await self._store.create_job(new)
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

    def _spawn(self, job: Job) -> None:
        self._background(self._drive(job))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        plan_job = self._plan_job or default_plan
        return plan_job(self._registry, self._clock(), job_id, circuit, exclude, min_fidelity)

    async def _run_dag(self, job: Job, run: _DagRun) -> None:
        """Run every fragment once its dependencies are done (independent ones at once)."""
        plan = run.plan
        done: dict[str, Any] = {}
        completed = {f.fragment_id for f in job.fragments if f.status is FragmentStatus.COMPLETED}
        for spec in plan.fragments:
            if spec.measure or spec.fragment_id not in completed or self._states is None:
                continue
            state = self._states.load_state(job.id, spec.fragment_id)
            if state is not None:  # FR-010: done before a restart; not run again
                done[spec.fragment_id] = state
                run.resumed.append(spec.fragment_id)
        if run.resumed:
            log.info("mesh_job_resumed", fragments=run.resumed)
        running: dict[asyncio.Task[Any], str] = {}
        try:
            while len(done) < len(plan.fragments):
                for spec in plan.ready(done, running.values()):
                    work = self._run_fragment(job.id, run, spec, self._input(plan, spec, done))
                    running[asyncio.ensure_future(work)] = spec.fragment_id
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    fragment_id = running.pop(task)
                    done[fragment_id] = task.result()  # _FragmentFailedError ends the job
        except _FragmentFailedError as exc:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await self._fail(self.job(job.id), exc.reason, str(exc))
            return
        parts = [(done[f.fragment_id], _measured_clbits(f)) for f in plan.fragments if f.measure]
        counts = combine_counts(parts, plan.num_clbits, self.job(job.id).seed)
        metadata = run.metadata()
        job = await self._set(self.job(job.id), JobState.COMPLETED, counts=counts,
                              metadata=metadata)  # fmt: skip
        if self._states is not None:
            self._states.delete(job.id)
        self._finished(job, "completed", "ok")

    def _input(self, plan: JobPlan, spec: FragmentSpec, done: dict[str, Any]) -> State | None:
        """The joined output states of the fragment's dependencies (None: start at |0..0>)."""
        if not spec.depends_on:
            return None
        parts = [(plan.fragment(d).qubits, done[d]) for d in spec.depends_on]
        if len(parts) == 1 and tuple(parts[0][0]) == spec.qubits:
            return cast(State, parts[0][1])
        return join(parts, spec.qubits)

    async def _run_fragment(
        self, job_id: str, run: _DagRun, spec: FragmentSpec, state: State | None
    ) -> Any:
        """One fragment to its end: its counts (measure) or output state; attempts go down its
        node list, then to a re-plan without the nodes that failed (FR-007)."""
        settings = self._settings
        job = self.job(job_id)
        attempt = max((f.attempt for f in job.fragments if f.fragment_id == spec.fragment_id),
                      default=0)  # fmt: skip
        nodes = [spec.node_id, *spec.fallbacks]
        failures: list[str] = []
        failed_nodes: set[str] = set()
        refused: dict[str, tuple[float, float] | None] = {}  # node -> the window it offered
        replans = 0
        while True:
            node = await self._next_node(job, spec, nodes, failed_nodes, set(refused))
            if node is None or len(failures) >= settings.max_attempts:
                # Retries exhausted, or no node of the plan is usable: the next feasible plan.
                exclude = frozenset(failed_nodes | refused.keys())
                replacement = self._replan(job, run, spec, exclude, replans, failures)
                if isinstance(replacement, str):
                    raise _FragmentFailedError("attempts" if failures else "infeasible",
                                               replacement)  # fmt: skip
                replans += 1
                run.replans += 1
                nodes = [replacement.node_id, *replacement.fallbacks]
                failures.clear()
                refused.clear()
                log.warning("mesh_fragment_replanned", fragment_id=spec.fragment_id,
                            excluded=sorted(exclude), nodes=nodes)  # fmt: skip
                continue
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
                fragment_id=spec.fragment_id, attempt=attempt, node=node
            ):
                try:
                    reserve_started = time.monotonic()
                    reservation, window = await self._reserve(job, spec, attempt, node)
                    if reservation is None:
                        refused[node] = window
                        job = self.job(job.id)
                        continue  # the next candidate
                    current = self.job(job.id)
                    if current.state is JobState.RESERVING:
                        await self._set(current, JobState.EXECUTING)
                    reserved = time.monotonic()
                    result = await self._execute(job, spec, reservation, state, run)
                    run.stage(
                        spec.fragment_id,
                        node,
                        attempt,
                        reserve_ms=_ms(reserved - reserve_started),
                        execute_ms=_ms(time.monotonic() - reserved),
                    )
                    return result
                except _AttemptFailedError as exc:
                    metrics.FRAGMENT_FAILURES.labels(exc.reason).inc()
                    failures.append(f"attempt {attempt} on {node}: {exc}")
                    run.errors.append(f"{spec.fragment_id} {failures[-1]}")
                    failed_nodes.add(node)
                    log.warning("mesh_fragment_failed", reason=exc.reason, error=str(exc))
                    if exc.final:
                        raise _FragmentFailedError(
                            "invalid_circuit", f"fragment {spec.fragment_id}: {failures[-1]}"
                        ) from exc
                    job = self.job(job.id)
                    if len(failures) < settings.max_attempts:
                        await asyncio.sleep(self._backoff(len(failures)))
                    continue

    async def _next_node(
        self, job: Job, spec: FragmentSpec, nodes: list[str], failed: set[str], refused: set[str]
    ) -> str | None:
        """The first node of the fragment's list that the registry can use now and that has
        neither failed nor refused it; else a refused one (the caller waits for its window);
        else a lone node that failed (retried); None when nothing on the list is usable
        (waiting up to `plan_wait_s` first: a restarted coordinator hears from nodes again)."""
        deadline = self._clock() + self._settings.plan_wait_s
        while True:
            now = self._clock()
            usable = {e.node_id for e in self._registry.candidates(
                now, gates=spec.gates, num_qubits=spec.num_qubits, min_fidelity=job.min_fidelity
            )}  # fmt: skip
            listed = [n for n in nodes if n in usable]
            fresh = [n for n in listed if n not in failed and n not in refused]
            if fresh:
                return fresh[0]
            waiting = [n for n in listed if n not in failed]
            if waiting:
                return waiting[0]
            if listed and len(nodes) == 1:
                return listed[0]
            if listed or now >= deadline:
                return None
            await asyncio.sleep(_PLAN_POLL_S)

    def _replan(
        self,
        job: Job,
        run: _DagRun,
        spec: FragmentSpec,
        exclude: frozenset[str],
        replans: int,
        failures: list[str],
    ) -> FragmentSpec | str:
        """The fragment's replacement in the next feasible plan without `exclude`, or the
        fragment-level error that ends the job."""
        head = (
            f"fragment {spec.fragment_id} failed {len(failures)} times: " + "; ".join(failures)
            if failures
            else f"fragment {spec.fragment_id}: no node of its plan is usable"
        )
        if replans >= _MAX_REPLANS:
            return f"{head}; re-planned {replans} times already"
        try:
            plan = self._plan(job.id, run.circuit, exclude, job.min_fidelity)
        except PlanInfeasibleError as exc:
            return f"{head}; no feasible plan without {sorted(exclude)}: {exc}"
        try:
            new = plan.fragment(spec.fragment_id)
        except KeyError:
            return f"{head}; the next plan cuts the circuit differently"
        if (new.circuit, new.qubits, new.depends_on) != (spec.circuit, spec.qubits,
                                                         spec.depends_on):  # fmt: skip
            return f"{head}; the next plan cuts the circuit differently"
        return new

    async def _reserve(
        self, job: Job, fragment: FragmentSpec, attempt: int, node: str
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
        # Written together: the store's group commit makes them one fsync, not two.
        await asyncio.gather(
            self._store.save_fragment(job.id, record),
            self._store.add_reservation_event(
                reservation_id, node, job.id, "requested", now,
                {"window": [request.window_start, request.window_end]},
            ),
        )  # fmt: skip
        raw = await self._call(node, RESERVE_PROTOCOL, request.model_dump_json().encode(),
                               settings.reserve_timeout_s, job, record)  # fmt: skip
        reply = ReserveReply.model_validate_json(raw)
        now = self._clock()
        if reply.ok:
            await asyncio.gather(
                self._store.add_reservation_event(reservation_id, node, job.id, "accepted", now),
                self._store.save_fragment(job.id, replace(record, status=FragmentStatus.RESERVED)),
            )
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
        self,
        job: Job,
        fragment: FragmentSpec,
        reservation_id: str,
        state: State | None,
        run: _DagRun,
    ) -> Any:
        """EXECUTE with the input state; the counts (measure) or the output state, kept on
        disk before the attempt is recorded completed (FR-010)."""
        record = next(f for f in self.job(job.id).fragments if f.reservation_id == reservation_id)
        started = replace(record, status=FragmentStatus.EXECUTING, start=self._clock())
        await self._store.save_fragment(job.id, started)
        handoff = state is not None or not fragment.measure
        input_state = None if state is None else encode_state(state)
        request = ExecuteRequest(
            correlation_id=f"{job.id}:{fragment.fragment_id}:{record.attempt}",
            job_id=job.id,
            fragment_id=fragment.fragment_id,
            reservation_id=reservation_id,
            circuit=fragment.circuit,
            shots=job.shots,
            seed=job.seed,
            input_state=input_state,
            return_state=not fragment.measure,
        )
        settings = self._settings
        # Per operation class: a state on the wire adds the transfer timeout to the run's.
        timeout = settings.execute_timeout_s + (settings.transfer_timeout_s if handoff else 0.0)
        sent = time.monotonic()
        raw = await self._call(
            record.node_id,
            EXECUTE_PROTOCOL,
            request.model_dump_json().encode(),
            timeout,
            job,
            started,
        )
        round_trip = time.monotonic() - sent
        reply = ExecuteReply.model_validate_json(raw)
        now = self._clock()
        missing = reply.counts is None if fragment.measure else reply.state is None
        if not reply.ok or missing:
            error = reply.error.message if reply.error else "the node returned no result"
            code = reply.error.code if reply.error else "no_result"
            await self._store.save_fragment(
                job.id, replace(started, status=FragmentStatus.FAILED, end=now,
                                error=f"{code}: {error}"),
            )  # fmt: skip
            self._background(self._release(job.id, started))
            raise _AttemptFailedError("node_error", f"{code}: {error}", final=code in FINAL_CODES)
        result: Any = reply.counts
        out_bytes = 0
        if not fragment.measure:
            assert reply.state is not None
            try:
                result = decode_state(reply.state, fragment.num_qubits)
            except ValueError as exc:
                await self._store.save_fragment(
                    job.id, replace(started, status=FragmentStatus.FAILED, end=now,
                                    error=f"bad_state: {exc}"),
                )  # fmt: skip
                raise _AttemptFailedError("node_error", f"bad_state: {exc}") from exc
            out_bytes = len(reply.state)
            if self._states is not None:
                await asyncio.to_thread(self._states.save_state, job.id, fragment.fragment_id,
                                        result)  # fmt: skip
        await asyncio.gather(
            self._store.save_fragment(
                job.id, replace(started, status=FragmentStatus.COMPLETED, end=self._clock())
            ),
            self._store.add_reservation_event(reservation_id, record.node_id, job.id,
                                              "used", now, {"run_s": reply.run_s}),
        )  # fmt: skip
        # The node keeps the window until its end unless told: give the slot back now.
        self._background(self._release(job.id, started))
        run.transfer(
            fragment.fragment_id,
            len(input_state or ""),
            out_bytes,
            _ms(max(0.0, round_trip - reply.run_s - reply.queued_s)),
            _ms(reply.run_s),
        )
        log.info("mesh_fragment_completed", node=record.node_id, run_s=reply.run_s,
                 state_bytes=out_bytes)  # fmt: skip
        return result

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


# A fragment whose node list is used up is re-planned at most this often (each re-plan
# excludes every node that failed it so far, so more would rarely find another).
_MAX_REPLANS = 2


class PlanInfeasibleError(QTaskError):
    """Raised by a planner when no node set can run the circuit (the message says why)."""


# (registry, now, job_id, circuit, exclude, min_fidelity) -> JobPlan, or PlanInfeasibleError.
PlanJob = Callable[[Registry, float, str, CircuitIR, frozenset[str], float], JobPlan]


def default_plan(
    registry: Registry,
    now: float,
    job_id: str,
    circuit: CircuitIR,
    exclude: frozenset[str],
    min_fidelity: float,
) -> JobPlan:
    """The job's plan from qtask.mesh.planner: `plan_job` (mesh part 2, the agreed Plan
    shape) when it has one, else part 1's single fragment on the registry's candidates."""
    plan_job = getattr(planner, "plan_job", None)
    if plan_job is not None:
        error = getattr(planner, "PlanInfeasibleError", PlanInfeasibleError)
        try:
            plan = plan_job(job_id, circuit, registry.snapshot(now), getattr(
                planner, "PlannerSettings", dict)(), seed=0, exclude=exclude,
                min_fidelity=min_fidelity)  # fmt: skip
        except error as exc:
            raise PlanInfeasibleError(str(exc)) from exc
        return JobPlan.from_plan(plan, circuit.num_clbits)
    fragment = planner.plan(job_id, circuit)
    found = [
        e.node_id
        for e in planner.candidates(registry, fragment, now, min_fidelity=min_fidelity)
        if e.node_id not in exclude
    ]
    if not found:
        reason = planner.infeasible(registry, fragment, now, min_fidelity)
        if exclude and "no available node" not in reason:
            reason = f"no node but {sorted(exclude)} can run it"
        raise PlanInfeasibleError(reason)
    spec = FragmentSpec(fragment.fragment_id, circuit, tuple(range(circuit.num_qubits)),
                        fragment.gates, (), found[0], tuple(found[1:]), True)  # fmt: skip
    return JobPlan(job_id, (spec,), num_clbits=circuit.num_clbits)


class _FragmentFailedError(Exception):
    """A fragment that cannot complete: the job FAILS with this fragment-level error."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _DagRun:
    """One drive of a job's DAG: its plan and circuit, and the metadata the result keeps."""

    def __init__(self, plan: JobPlan, circuit: CircuitIR, stages: dict[str, float]) -> None:
        self.plan = plan
        self.circuit = circuit
        self.stages = stages
        self.started = time.monotonic()
        self.route: list[dict[str, Any]] = []
        self.transfers: list[dict[str, Any]] = []
        self.resumed: list[str] = []
        self.errors: list[str] = []
        self.replans = 0

    def stage(self, fragment_id: str, node: str, attempt: int, **times: float) -> None:
        self.route.append({"fragment_id": fragment_id, "node": node, "attempt": attempt, **times})

    def transfer(self, fragment_id: str, bytes_in: int, bytes_out: int, ms: float,
                 run_ms: float) -> None:  # fmt: skip
        self.transfers.append({"fragment_id": fragment_id, "bytes_in": bytes_in,
                               "bytes_out": bytes_out, "ms": ms, "run_ms": run_ms})  # fmt: skip

    def metadata(self) -> dict[str, object]:
        """Route, transfers and time per stage (FR-006's execution metadata)."""
        return {
            "fragments": len(self.plan.fragments),
            "route": self.route,
            "transfers": self.transfers,
            "stages": {**self.stages, "execute_ms": _ms(time.monotonic() - self.started)},
            "resumed": self.resumed,
            "replans": self.replans,
            "failed_attempts": self.errors,
        }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _measured_clbits(fragment: FragmentSpec) -> tuple[int, ...]:
    return tuple(sorted({c for i in fragment.circuit.instructions if i.name == "measure"
                         for c in i.clbits}))  # fmt: skip
