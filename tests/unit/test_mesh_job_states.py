"""A mesh job's state machine (FR-009): the legal moves, and nothing leaves an end state."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtask.errors import InvalidTransitionError
from qtask.mesh.jobs import Job, JobState, legal


def job(state: JobState = JobState.QUEUED) -> Job:
    return Job("j1", state, "OPENQASM 2.0;", 100, 1, 0.0, created_at=1.0, updated_at=1.0)


def test_the_happy_path_moves_through_every_state_in_order() -> None:
    j = job()
    for state in (JobState.COMPILING, JobState.RESERVING, JobState.EXECUTING, JobState.COMPLETED):
        j = j.advance(state, now=2.0)
    assert j.state is JobState.COMPLETED
    assert j.updated_at == 2.0


def test_a_failed_run_goes_back_to_reserving_for_a_retry() -> None:
    j = job(JobState.EXECUTING).advance(JobState.RESERVING, now=2.0)
    assert j.state is JobState.RESERVING


@given(st.sampled_from(list(JobState)), st.sampled_from(list(JobState)))
def test_only_listed_transitions_are_allowed_and_ended_jobs_never_move(
    current: JobState, new: JobState
) -> None:
    if current.terminal:
        assert not legal(current, new)
    if legal(current, new):
        assert job(current).advance(new, now=2.0).state is new
    else:
        with pytest.raises(InvalidTransitionError):
            job(current).advance(new, now=2.0)


@given(st.lists(st.sampled_from(list(JobState)), max_size=30))
def test_any_sequence_of_legal_moves_reaches_completed_only_through_executing(
    path: list[JobState],
) -> None:
    j = job()
    seen = [j.state]
    for state in path:
        if legal(j.state, state):
            j = j.advance(state, now=2.0)
            seen.append(j.state)
    if JobState.COMPLETED in seen:
        assert seen[seen.index(JobState.COMPLETED) - 1] is JobState.EXECUTING


def test_the_body_has_counts_only_when_completed_and_error_only_when_failed() -> None:
    done = job(JobState.EXECUTING).advance(JobState.COMPLETED, now=2.0, counts={"00": 5})
    assert done.body()["counts"] == {"00": 5}
    assert "error" not in done.body()
    failed = job().advance(JobState.FAILED, now=2.0, error="no node")
    assert failed.body()["error"] == "no node"
    assert "counts" not in failed.body()
