"""The task's state machine and ids."""

from __future__ import annotations

import itertools
import uuid

import pytest

from qtask.domain.lifecycle import TRANSITIONS, check_transition
from qtask.domain.task import CircuitInfo, Encoding, Status, Task, new_task_id
from qtask.errors import InvalidTransitionError, QTaskError

INFO = CircuitInfo(
    encoding=Encoding.QASM3,
    num_qubits=2,
    num_clbits=2,
    num_operations=4,
    clifford=True,
    needs_transpile=False,
    measured=True,
)

ALLOWED = {
    (Status.QUEUED, Status.RUNNING),
    (Status.QUEUED, Status.COMPLETED),
    (Status.QUEUED, Status.FAILED),
    (Status.RUNNING, Status.QUEUED),
    (Status.RUNNING, Status.COMPLETED),
    (Status.RUNNING, Status.FAILED),
}
ALL_PAIRS = list(itertools.product(Status, Status))


def make_task(status: Status = Status.QUEUED) -> Task:
    return Task(id=new_task_id(), source="OPENQASM 3.0;", info=INFO, shots=10, status=status)


def test_transitions_cover_every_status() -> None:
    assert set(TRANSITIONS) == set(Status)


def test_transition_table_is_exactly_the_documented_moves() -> None:
    table = {(current, new) for current, targets in TRANSITIONS.items() for new in targets}
    assert table == ALLOWED


def test_terminal_states_allow_no_move() -> None:
    assert TRANSITIONS[Status.COMPLETED] == frozenset()
    assert TRANSITIONS[Status.FAILED] == frozenset()


def test_no_state_moves_to_itself() -> None:
    for status in Status:
        assert status not in TRANSITIONS[status]


@pytest.mark.parametrize(("current", "new"), sorted(ALLOWED))
def test_check_transition_allows_legal_moves(current: Status, new: Status) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(("current", "new"), [p for p in ALL_PAIRS if p not in ALLOWED])
def test_check_transition_refuses_illegal_moves(current: Status, new: Status) -> None:
    with pytest.raises(InvalidTransitionError) as info:
        check_transition(current, new)
    assert str(current) in str(info.value)
    assert str(new) in str(info.value)


def test_invalid_transition_error_is_a_qtask_error() -> None:
    assert issubclass(InvalidTransitionError, QTaskError)


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (Status.QUEUED, False),
        (Status.RUNNING, False),
        (Status.COMPLETED, True),
        (Status.FAILED, True),
    ],
)
def test_terminal_property(status: Status, terminal: bool) -> None:
    assert status.terminal is terminal


def test_status_values_are_lowercase_strings() -> None:
    assert [s.value for s in Status] == ["queued", "running", "completed", "failed"]
    assert Status("running") is Status.RUNNING
    assert Status.COMPLETED == "completed"


def test_new_task_defaults() -> None:
    task = make_task()
    assert task.status is Status.QUEUED
    assert task.attempts == 0
    assert task.result is None
    assert task.error is None
    assert task.program is None
    assert task.created_at > 0


def test_moved_returns_an_updated_copy() -> None:
    task = make_task()
    running = task.moved(Status.RUNNING, attempts=1, started_at=12.5)
    assert running.status is Status.RUNNING
    assert running.attempts == 1
    assert running.started_at == 12.5
    assert running.id == task.id
    assert running.source == task.source
    # The original is untouched (frozen dataclass).
    assert task.status is Status.QUEUED
    assert task.attempts == 0


def test_moved_through_a_retry_and_to_completion() -> None:
    task = make_task().moved(Status.RUNNING, attempts=1)
    task = task.moved(Status.QUEUED, last_error="crash")
    task = task.moved(Status.RUNNING, attempts=2)
    done = task.moved(Status.COMPLETED, result={"00": 5})
    assert done.status.terminal
    assert done.result == {"00": 5}
    assert done.last_error == "crash"


@pytest.mark.parametrize("terminal", [Status.COMPLETED, Status.FAILED])
@pytest.mark.parametrize("target", list(Status))
def test_moved_from_terminal_raises(terminal: Status, target: Status) -> None:
    task = make_task(terminal)
    with pytest.raises(InvalidTransitionError):
        task.moved(target)


def test_moved_to_the_same_state_raises() -> None:
    with pytest.raises(InvalidTransitionError):
        make_task(Status.QUEUED).moved(Status.QUEUED)
    with pytest.raises(InvalidTransitionError):
        make_task(Status.RUNNING).moved(Status.RUNNING)


def test_moved_with_unknown_field_raises_type_error() -> None:
    with pytest.raises(TypeError):
        make_task().moved(Status.RUNNING, no_such_field=1)


def test_task_is_immutable() -> None:
    task = make_task()
    with pytest.raises(AttributeError):
        task.status = Status.RUNNING  # type: ignore[misc]


def test_new_task_id_is_a_uuid4_string() -> None:
    task_id = new_task_id()
    parsed = uuid.UUID(task_id)
    assert parsed.version == 4
    assert str(parsed) == task_id
    assert len(task_id) == 36
    assert task_id == task_id.lower()


def test_new_task_ids_are_unique() -> None:
    ids = {new_task_id() for _ in range(10_000)}
    assert len(ids) == 10_000
