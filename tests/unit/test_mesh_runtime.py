"""The coordinator's job runtime on fake nodes (FR-006, FR-007, FR-010): one fragment on the
best node, refusals and failures retried elsewhere with backoff, infeasible jobs failed with the
reason, and a restart that finishes what was in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from qtask.errors import CircuitError
from qtask.mesh.config import CoordinatorSettings
from qtask.mesh.jobs import Fragment, FragmentStatus, Job, JobState
from qtask.mesh.protocol import (
    EXECUTE_PROTOCOL,
    RESERVE_PROTOCOL,
    Advert,
    Availability,
    CircuitIR,
    ErrorInfo,
    ExecuteReply,
    ExecuteRequest,
    Instruction,
    NoiseSpec,
    ReserveReply,
    ReserveRequest,
)
from qtask.mesh.registry import Registry, Thresholds
from qtask.mesh.runtime import CANCELLED, JobConflictError, JobNotFoundError, Runtime
from qtask.mesh.testing import FakeMesh, FakeNode, InMemoryMeshStore

BELL = CircuitIR(
    num_qubits=2,
    num_clbits=2,
    instructions=(
        Instruction(name="h", qubits=(0,)),
        Instruction(name="cx", qubits=(0, 1)),
        Instruction(name="measure", qubits=(0,), clbits=(0,)),
        Instruction(name="measure", qubits=(1,), clbits=(1,)),
    ),
    cregs=(("c", 2),),
)
FAST = CoordinatorSettings(
    plan_wait_s=0.0, backoff_base_s=0.001, backoff_max_s=0.002, max_attempts=3
)


def compile_bell(qasm: str) -> CircuitIR:
    if "bad" in qasm:
        raise CircuitError("line 2, column 1: unknown gate 'foo'")
    return BELL


def advert(node: str, fidelity: float, gates: tuple[str, ...] = ("h", "cx", "measure")) -> Advert:
    now = time.time()
    return Advert(
        node_id=node, gates=gates, qubit_range=(1, 5), fidelity=fidelity,
        fidelity_measured_at=now, noise=NoiseSpec(), availability=Availability.AVAILABLE,
        capacity=2, in_use=0, timestamp=now, seq=1,
    )  # fmt: skip


class Rig:
    def __init__(self, settings: CoordinatorSettings = FAST) -> None:
        self.store = InMemoryMeshStore()
        self.registry = Registry(Thresholds(ttl_s=60))
        self.mesh = FakeMesh()
        self.runtime = Runtime(self.store, self.registry, self.mesh, settings, compile_bell)

    def node(self, node_id: str, fidelity: float, **kwargs: object) -> FakeNode:
        self.registry.upsert(advert(node_id, fidelity), time.time())
        return self.mesh.add(FakeNode(node_id, **kwargs))  # type: ignore[arg-type]

    async def finished(self, job_id: str) -> Job:
        async with asyncio.timeout(10):
            while not (job := self.runtime.job(job_id)).state.terminal:
                await self.runtime.wait(job_id, 1.0)
        return job


async def test_a_job_runs_as_one_fragment_on_the_best_node_and_completes_with_its_counts() -> None:
    rig = Rig()
    rig.node("good", 0.95)
    best = rig.node("best", 0.99)
    job = await rig.runtime.submit("OPENQASM 2.0;", 100, 7, 0.9, None)
    assert job.state is JobState.QUEUED
    done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED
    expected = await best.answer_execute(
        ExecuteRequest(correlation_id="x", circuit=BELL, shots=100)
    )
    assert done.counts == expected.counts
    [fragment] = done.fragments
    assert fragment.node_id == "best"
    assert fragment.status is FragmentStatus.COMPLETED
    assert fragment.start is not None
    assert fragment.end is not None
    [(_, executed)] = [r for r in best.requests if r[0] == EXECUTE_PROTOCOL]
    assert executed.seed == 7
    assert executed.reservation_id == fragment.reservation_id
    [decision] = rig.store.decisions(job.id)
    assert decision["node_id"] == "best"
    assert [n["node_id"] for n in decision["snapshot"]["nodes"]] == ["best", "good"]
    kinds = [e["kind"] for e in rig.store.reservation_events(fragment.reservation_id)]
    assert kinds[:3] == ["requested", "accepted", "used"]


async def test_every_state_is_seen_in_order_by_a_waiter() -> None:
    rig = Rig()
    gate = asyncio.Event()

    async def slow(request: ExecuteRequest) -> ExecuteReply:
        await gate.wait()
        return ExecuteReply(ok=True, correlation_id="c", node_id="n", counts={"00": 1})

    rig.node("n", 0.99, execute=slow)
    job = await rig.runtime.submit("OPENQASM 2.0;", 1, None, 0.0, None)
    seen = [job.state]
    async with asyncio.timeout(10):
        while seen[-1] is not JobState.EXECUTING:
            state = (await rig.runtime.wait(job.id, 1.0)).state
            if state is not seen[-1]:
                seen.append(state)
        gate.set()
        seen.append((await rig.finished(job.id)).state)
    assert seen[0] is JobState.QUEUED
    assert seen[-2:] == [JobState.EXECUTING, JobState.COMPLETED]


async def test_a_job_no_node_can_run_fails_with_the_missing_capability() -> None:
    rig = Rig()
    rig.node("a", 0.95)
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.99, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.FAILED
    assert done.error == (
        "no available node offers `cx` with fidelity >= 0.99 (best: 0.950)"  # the planner's words
    )
    [decision] = rig.store.decisions(job.id)
    assert decision["node_id"] is None


async def test_a_job_waits_for_a_node_that_advertises_within_the_plan_wait() -> None:
    rig = Rig(FAST.model_copy(update={"plan_wait_s": 5.0}))
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    await asyncio.sleep(0.2)
    assert rig.runtime.job(job.id).state is JobState.COMPILING  # planning waits for a node (part 2)
    rig.node("late", 0.9)
    done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED
    assert done.fragments[-1].node_id == "late"


async def test_an_invalid_circuit_fails_without_any_node_being_asked() -> None:
    rig = Rig()
    node = rig.node("a", 0.99)
    job = await rig.runtime.submit("bad", 10, None, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.FAILED
    assert done.error == "line 2, column 1: unknown gate 'foo'"
    assert node.requests == []


async def test_a_failed_run_is_retried_on_the_next_feasible_node() -> None:
    rig = Rig()

    async def broken(request: ExecuteRequest) -> ExecuteReply:
        return ExecuteReply(
            ok=False, correlation_id=request.correlation_id, node_id="best",
            error=ErrorInfo(code="simulator_error", message="out of memory"),
        )  # fmt: skip

    best = rig.node("best", 0.99, execute=broken)
    rig.node("second", 0.9)
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED
    assert [(f.attempt, f.node_id, f.status) for f in done.fragments] == [
        (1, "best", FragmentStatus.FAILED),
        (2, "second", FragmentStatus.COMPLETED),
    ]
    assert done.fragments[0].error == "simulator_error: out of memory"
    async with asyncio.timeout(5):
        await rig.runtime.drain()
    # The failed attempt's reservation is given back (a refused or lost EXECUTE never ran).
    reserves = [r.action for p, r in best.requests if p == RESERVE_PROTOCOL]
    assert reserves == ["reserve", "release"]


async def test_an_unreachable_node_is_recorded_and_the_job_moves_on() -> None:
    rig = Rig()
    rig.node("gone", 0.99, down=True)
    rig.node("there", 0.9)
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED
    assert done.fragments[0].node_id == "gone"
    assert "unreachable" in (done.fragments[0].error or "")
    assert done.fragments[1].node_id == "there"


async def test_after_max_attempts_the_job_fails_naming_every_attempt() -> None:
    rig = Rig()
    rig.node("only", 0.99, down=True)
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.FAILED
    assert len(done.fragments) == 3
    assert done.error is not None
    assert done.error.startswith(f"fragment {job.id}.f0 failed 3 times: attempt 1 on only: ")


async def test_a_refused_reservation_goes_to_the_next_node() -> None:
    rig = Rig()

    async def full(request: ReserveRequest) -> ReserveReply:
        return ReserveReply(
            ok=False, correlation_id=request.correlation_id,
            reservation_id=request.reservation_id, node_id="busy",
            error=ErrorInfo(code="no_capacity", message="both slots reserved"),
            next_window=(time.time() + 30, time.time() + 60),
        )  # fmt: skip

    rig.node("busy", 0.99, reserve=full)
    rig.node("free", 0.9)
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED
    assert done.fragments[-1].node_id == "free"
    refused = rig.store.reservation_events(done.fragments[0].reservation_id)
    assert [e["kind"] for e in refused] == ["requested", "rejected"]
    assert refused[1]["detail"]["reason"] == "both slots reserved"


def refuse_once(
    window_in_s: float, refused: asyncio.Event
) -> Callable[[ReserveRequest], Awaitable[ReserveReply]]:
    """A node "only"'s RESERVE: the first refused, offering a window `window_in_s` from now
    (`refused` set then); the rest accepted."""

    async def reserve(request: ReserveRequest) -> ReserveReply:
        if not refused.is_set():
            refused.set()
            return ReserveReply(
                ok=False, correlation_id=request.correlation_id,
                reservation_id=request.reservation_id, node_id="only",
                next_window=(time.time() + window_in_s, time.time() + window_in_s + 30),
            )  # fmt: skip
        return ReserveReply(ok=True, correlation_id=request.correlation_id,
                            reservation_id=request.reservation_id, node_id="only")  # fmt: skip

    return reserve


async def test_a_refusal_by_the_only_node_waits_for_the_window_it_offers() -> None:
    rig = Rig()
    rig.node("only", 0.99, reserve=refuse_once(0.3, asyncio.Event()))
    started = time.monotonic()
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED
    assert time.monotonic() - started >= 0.25
    assert [f.status for f in done.fragments] == [FragmentStatus.FAILED, FragmentStatus.COMPLETED]


async def test_a_refused_fragment_asks_again_once_the_node_advertises_a_free_slot() -> None:
    # The window a node offers is where its reservations end (30 s holds), but a fragment runs
    # for milliseconds: an advert with a free slot ends the wait long before the window.
    rig = Rig()
    refused = asyncio.Event()
    rig.node("only", 0.99, reserve=refuse_once(30, refused))
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    await asyncio.wait_for(refused.wait(), 5)
    await asyncio.sleep(0.3)
    assert not rig.runtime.job(job.id).state.terminal  # still waiting for the window
    free = advert("only", 0.99).model_copy(update={"seq": 2, "timestamp": time.time()})
    rig.registry.upsert(free, time.time())
    async with asyncio.timeout(3):
        done = await rig.finished(job.id)
    assert done.state is JobState.COMPLETED
    assert [f.status for f in done.fragments] == [FragmentStatus.FAILED, FragmentStatus.COMPLETED]


async def test_a_restart_abandons_the_attempt_in_flight_and_runs_the_job_again() -> None:
    rig = Rig()
    rig.node("n", 0.99)
    now = time.time()
    job = Job("j1", JobState.EXECUTING, "OPENQASM 2.0;", 10, 3, 0.0, now, now)
    await rig.store.save_job(job)
    await rig.store.save_fragment(
        "j1", Fragment("j1.f0", 1, "n", FragmentStatus.EXECUTING, "r-old", start=now)
    )
    assert await rig.runtime.recover() == 1
    done = await rig.finished("j1")
    assert done.state is JobState.COMPLETED
    assert [(f.attempt, f.status) for f in done.fragments] == [
        (1, FragmentStatus.ABANDONED),
        (2, FragmentStatus.COMPLETED),
    ]
    async with asyncio.timeout(5):
        await rig.runtime.drain()
    assert rig.store.reservation_events("r-old")[0]["kind"] == "released"
    released = [r for p, r in rig.mesh.nodes["n"].requests if p == RESERVE_PROTOCOL]
    assert released[0].action == "release"


async def test_an_unknown_job_is_not_found() -> None:
    rig = Rig()
    with pytest.raises(JobNotFoundError, match="No job has the id 'nope'"):
        rig.runtime.job("nope")


async def test_a_circuit_a_node_calls_invalid_fails_at_once_without_retries() -> None:
    rig = Rig()

    async def invalid(request: ExecuteRequest) -> ExecuteReply:
        return ExecuteReply(
            ok=False, correlation_id=request.correlation_id, node_id="a",
            error=ErrorInfo(code="invalid_circuit", message="unknown gate 'foo'"),
        )  # fmt: skip

    rig.node("a", 0.99, execute=invalid)
    other = rig.node("b", 0.9)
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    done = await rig.finished(job.id)
    assert done.state is JobState.FAILED
    assert (
        done.error == f"fragment {job.id}.f0: attempt 1 on a: invalid_circuit: unknown gate 'foo'"
    )
    assert other.requests == []


async def test_a_completed_run_sends_no_release_the_node_freed_the_slot_at_its_end() -> None:
    rig = Rig()
    node = rig.node("a", 0.99)
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    await rig.finished(job.id)
    async with asyncio.timeout(5):
        await rig.runtime.drain()
    reserves = [r for p, r in node.requests if p == RESERVE_PROTOCOL]
    assert [r.action for r in reserves] == ["reserve"]
    rid = reserves[0].reservation_id
    assert [e["kind"] for e in rig.store.reservation_events(rid)] == [
        "requested", "accepted", "used",
    ]  # fmt: skip


async def test_a_queued_job_cancelled_ends_failed_cancelled_and_never_reaches_a_node() -> None:
    rig = Rig(CoordinatorSettings(plan_wait_s=30.0))
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)  # no node: it waits
    cancelled = await rig.runtime.cancel(job.id)
    assert cancelled.state is JobState.FAILED
    assert cancelled.error == CANCELLED
    node = rig.node("late", 0.99)
    async with asyncio.timeout(5):
        await rig.runtime.drain()
    assert rig.runtime.job(job.id).state is JobState.FAILED
    assert node.requests == []


async def test_an_executing_job_cancelled_releases_its_reservation_and_discards_the_counts() -> (
    None
):
    rig = Rig()
    running = asyncio.Event()
    finish = asyncio.Event()

    async def slow(request: ExecuteRequest) -> ExecuteReply:
        running.set()
        await finish.wait()
        return ExecuteReply(ok=True, correlation_id="c", node_id="a", counts={"00": 10})

    node = rig.node("a", 0.99, execute=slow)
    job = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    async with asyncio.timeout(5):
        await running.wait()
    assert rig.runtime.job(job.id).state is JobState.EXECUTING
    cancelled = await rig.runtime.cancel(job.id)
    finish.set()
    async with asyncio.timeout(5):
        await rig.runtime.drain()
    done = rig.runtime.job(job.id)
    assert cancelled.state is done.state is JobState.FAILED
    assert done.error == CANCELLED
    assert done.counts is None
    [fragment] = done.fragments
    assert (fragment.status, fragment.error) == (FragmentStatus.FAILED, CANCELLED)
    reserves = [r for p, r in node.requests if p == RESERVE_PROTOCOL]
    assert [r.action for r in reserves] == ["reserve", "release"]
    kinds = [e["kind"] for e in rig.store.reservation_events(fragment.reservation_id)]
    assert kinds == ["requested", "accepted", "released"]


async def test_cancelling_twice_answers_the_cancelled_job_and_an_ended_job_conflicts() -> None:
    rig = Rig(CoordinatorSettings(plan_wait_s=30.0))
    waiting = await rig.runtime.submit("OPENQASM 2.0;", 10, None, 0.0, None)
    first, second = await asyncio.gather(
        rig.runtime.cancel(waiting.id), rig.runtime.cancel(waiting.id)
    )
    assert first == second
    assert first.error == CANCELLED
    rig.node("a", 0.99)
    done = await rig.finished((await rig.runtime.submit("OPENQASM 2.0;", 1, None, 0.0, None)).id)
    assert done.state is JobState.COMPLETED
    with pytest.raises(JobConflictError, match="COMPLETED"):
        await rig.runtime.cancel(done.id)
    with pytest.raises(JobNotFoundError):
        await rig.runtime.cancel("nope")
