"""A fragment's attempts (FR-006, FR-007): what the coordinator's runtime does for one
fragment of a job's DAG once its dependencies are done.

RESERVE on the fragment's node (`reserve_timeout_s`), EXECUTE with the joined input state
(`execute_timeout_s`, plus `transfer_timeout_s` when a state travels), the output state kept
beside the database with the completed record; a failure retried with bounded exponential
backoff and jitter down [node, *fallbacks]; a refusal by every node waits for the earliest
window offered; then a re-plan without the failed nodes. `FragmentAttempts` is the half of
qtask.mesh.runtime.Runtime that does this (a mixin: it shares the runtime's store, mesh,
registry and settings); the job-level drive, submission and recovery stay in runtime.py.
Also here: the ports the runtime needs (MeshPort, JobRecords) and the run's metadata.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Protocol

import structlog

from qtask.errors import QTaskError
from qtask.logs import get_logger
from qtask.mesh import coord_metrics as metrics
from qtask.mesh.config import CoordinatorSettings
from qtask.mesh.dag import FragmentSpec, JobPlan, StateFiles
from qtask.mesh.handoff import State, decode_state, encode_state
from qtask.mesh.jobs import Fragment, FragmentStatus, Job, JobState
from qtask.mesh.planner import PlanInfeasibleError
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

# How often a fragment waiting for a usable node looks at the registry again.
_PLAN_POLL_S = 0.1
# A reservation release is a courtesy (the node expires it anyway): it gets this long.
_RELEASE_TIMEOUT_S = 2.0


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


# Node error codes that no other node would answer differently: the job fails at once (a
# deterministic failure retried with backoff only delays its answer).
FINAL_CODES = frozenset({"invalid_circuit", "bad_request"})


class _AttemptFailedError(Exception):
    def __init__(self, reason: str, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.final = final


class FragmentAttempts:
    """Runs one fragment to its end (see the module docstring); mixed into Runtime."""

    _store: JobRecords
    _registry: Registry
    _mesh: MeshPort
    _settings: CoordinatorSettings
    _clock: Callable[[], float]
    _rng: random.Random
    _states: StateFiles | None

    def job(self, job_id: str) -> Job:
        raise NotImplementedError

    async def _set(self, job: Job, state: JobState, **changes: object) -> Job:
        raise NotImplementedError

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        raise NotImplementedError

    def _plan(
        self, job_id: str, circuit: CircuitIR, exclude: frozenset[str], min_fidelity: float
    ) -> JobPlan:
        raise NotImplementedError

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
        while True:
            node = await self._next_node(job, spec, nodes, failed_nodes, set(refused))
            if node is None or len(failures) >= settings.max_attempts:
                # Retries exhausted, or no node of the plan is usable: the next feasible plan.
                exclude = frozenset(failed_nodes | refused.keys())
                replacement = self._replan(job, run, spec, exclude, failures)
                if isinstance(replacement, JobPlan):
                    run.replans += 1
                    raise _NewPlanError(replacement)
                if isinstance(replacement, str):
                    raise _FragmentFailedError("attempts" if failures else "infeasible",
                                               replacement)  # fmt: skip
                run.replans += 1
                nodes = [replacement.node_id, *replacement.fallbacks]
                failures.clear()
                refused.clear()
                log.warning("mesh_fragment_replanned", fragment_id=spec.fragment_id,
                            excluded=sorted(exclude), nodes=nodes)  # fmt: skip
                continue
            if node in refused:
                # Every candidate refused: wait for the earliest window offered (bounded) or
                # until one of them advertises a free slot, then ask again. A whole round of
                # refusals counts as one failed attempt.
                windows = [w[0] for w in refused.values() if w is not None]
                now = self._clock()
                wait = min(windows, default=now) - now
                failures.append(f"every candidate refused a reservation ({len(refused)} nodes)")
                metrics.FRAGMENT_FAILURES.labels("rejected").inc()
                await asyncio.sleep(self._backoff(len(failures)))
                until = now + min(wait, settings.reservation_hold_s)
                await self._until_free(set(refused), since=now, until=until)
                refused.clear()
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

    async def _until_free(self, nodes: set[str], *, since: float, until: float) -> None:
        """Return at `until`, or sooner once one of `nodes` advertises a free slot in an
        advert received after `since` (a window a node offers is its reservations' end, and
        most are given back long before: a fragment runs for milliseconds)."""
        while (now := self._clock()) < until:
            for node in nodes:
                entry = self._registry.get(node)
                if (
                    entry is not None
                    and entry.received_at > since
                    and entry.advert.in_use < entry.advert.capacity
                ):
                    return
            await asyncio.sleep(min(_PLAN_POLL_S, until - now))

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
        failures: list[str],
    ) -> FragmentSpec | JobPlan | str:
        """The fragment's replacement in the next feasible plan without `exclude`; that whole
        plan when it cuts the circuit differently; or the fragment-level error that ends
        the job."""
        head = (
            f"fragment {spec.fragment_id} failed {len(failures)} times: " + "; ".join(failures)
            if failures
            else f"fragment {spec.fragment_id}: no node of its plan is usable"
        )
        if run.replans >= _MAX_REPLANS:
            return f"{head}; re-planned {run.replans} times already"
        try:
            plan = self._plan(job.id, run.circuit, exclude, job.min_fidelity)
        except PlanInfeasibleError as exc:
            return f"{head}; no feasible plan without {sorted(exclude)}: {exc}"
        try:
            new = plan.fragment(spec.fragment_id)
        except KeyError:
            return plan
        if (new.circuit, new.qubits, new.depends_on) != (spec.circuit, spec.qubits,
                                                         spec.depends_on):  # fmt: skip
            return plan
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
        # Written together (the store's group commit makes them one fsync, not two), while the
        # request is on the wire: both are committed before the reply is acted on. A crash in
        # between leaves the node a reservation nobody asked about: it expires at its window's
        # end (reservation_hold_s), as a release lost in transit would.
        saving = asyncio.gather(
            self._store.save_fragment(job.id, record),
            self._store.add_reservation_event(
                reservation_id, node, job.id, "requested", now,
                {"window": [request.window_start, request.window_end]},
            ),
        )  # fmt: skip
        try:
            raw = await self._call(node, RESERVE_PROTOCOL, request.model_dump_json().encode(),
                                   settings.reserve_timeout_s, job, record, saving)  # fmt: skip
        finally:
            await saving
        reply = ReserveReply.model_validate_json(raw)
        now = self._clock()
        if reply.ok:
            # Not awaited: it shares the fsync of the EXECUTING record written next (the row
            # saved before the request already lets a restart release the reservation).
            self._background(
                self._store.add_reservation_event(reservation_id, node, job.id, "accepted", now)
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
        # Committed while the request is on the wire, before the reply is acted on (a restart
        # treats RESERVING and EXECUTING attempts alike: abandoned, reservation released).
        saving = asyncio.ensure_future(self._store.save_fragment(job.id, started))
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
        try:
            raw = await self._call(
                record.node_id,
                EXECUTE_PROTOCOL,
                request.model_dump_json().encode(),
                timeout,
                job,
                started,
                saving,
            )
        finally:
            await saving
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
        # The state file and the completed record are written at once: a restart counts the
        # fragment done only when both exist (the file appears whole or not at all).
        await asyncio.gather(
            self._keep_state(job.id, fragment, result),
            self._store.save_fragment(
                job.id, replace(started, status=FragmentStatus.COMPLETED, end=self._clock())
            ),
            self._store.add_reservation_event(reservation_id, record.node_id, job.id,
                                              "used", now, {"run_s": reply.run_s}),
        )  # fmt: skip
        # No release: a reservation is good for one run, and the node freed it when the run
        # ended (a release sent now could arrive after this job's next RESERVE to that node).
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

    async def _keep_state(self, job_id: str, fragment: FragmentSpec, result: Any) -> None:
        if self._states is not None and not fragment.measure:
            await asyncio.to_thread(self._states.save_state, job_id, fragment.fragment_id, result)

    async def _call(
        self,
        node: str,
        protocol: str,
        data: bytes,
        timeout: float,
        job: Job,
        record: Fragment,
        saving: asyncio.Future[Any],
    ) -> bytes:
        """One request; a transport failure is recorded on the attempt (after `saving`, the
        attempt's record going out with the request) and raised as _AttemptFailedError."""
        try:
            return await self._mesh.request(node, protocol, data, timeout=timeout)
        except (QTaskError, TimeoutError, OSError) as exc:
            await saving
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


# A job's drive re-plans at most this often (each re-plan excludes every node that failed the
# fragment so far, so more would rarely find another).
_MAX_REPLANS = 2


# (registry, now, job_id, circuit, exclude, min_fidelity) -> JobPlan, or PlanInfeasibleError.
PlanJob = Callable[[Registry, float, str, CircuitIR, frozenset[str], float], JobPlan]


class _NewPlanError(Exception):
    """A re-plan cut the circuit differently: the DAG starts again on `plan`."""

    def __init__(self, plan: JobPlan) -> None:
        super().__init__("re-planned")
        self.plan = plan


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
            # The cost model's predicted fidelity of the plan that ran (FR-013 sets it beside
            # the measured one): the product of its fragments' estimates.
            "est_fidelity": round(math.prod(f.est_fidelity for f in self.plan.fragments), 6),
        }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _measured_clbits(fragment: FragmentSpec) -> tuple[int, ...]:
    return tuple(sorted({c for i in fragment.circuit.instructions if i.name == "measure"
                         for c in i.clbits}))  # fmt: skip
