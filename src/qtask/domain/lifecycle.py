"""The task's life, in one place: its states, the moves allowed between them, when an attempt is
counted, what a delivery of a task does, and what putting it back in the queue costs.

Local and remote tasks follow the one state machine drawn in docs/architecture.md. Stores and
queues apply these rules, atomically and in their own language where they must (an SQL statement
or a Lua script is given the numbers from here); they do not decide them. In particular a queue's
own delivery count (JetStream's `num_delivered`) is never an attempt number: it cannot know that
a shutdown refunded one. No I/O here.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from qtask.errors import InvalidTransitionError

if TYPE_CHECKING:
    from qtask.domain.task import Task


class Status(enum.StrEnum):
    """Where a task is in its life; see docs/architecture.md for the diagram."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        """True once the task can never change again."""
        return self in (Status.COMPLETED, Status.FAILED)


# Every allowed move. RUNNING -> QUEUED is a retry (worker crash, lease lost, shutdown);
# QUEUED -> FAILED is a task given up on before it ran (its attempts were used up) or cancelled;
# QUEUED -> COMPLETED is a result from a worker whose lease lapsed while it ran: the result is
# still correct, and the first result stored wins.
# A task on a remote backend uses the same states: it stays RUNNING while its provider works
# (submitted: a domain.remote.RemoteJob is stored and the queue no longer hands it out), and the
# poller moves it to COMPLETED or FAILED; it never goes back to QUEUED once submitted.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.COMPLETED, Status.FAILED}),
    Status.RUNNING: frozenset({Status.QUEUED, Status.COMPLETED, Status.FAILED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
}


def check_transition(current: Status, new: Status) -> None:
    """Raise InvalidTransitionError unless the state machine allows current -> new."""
    if new not in TRANSITIONS[current]:
        raise InvalidTransitionError(f"a {current} task cannot become {new}")


# --- attempts --------------------------------------------------------------------------------

# An attempt is counted when a task is started for a delivery (a claim of the embedded queue, a
# JetStream message handed to a worker), on top of what the store holds: a run that was lost
# (its worker crashed, its lease lapsed) keeps its attempt, a shutdown refunds it. Stores add
# this in the same atomic step that marks the task running.
ATTEMPT_PER_START = 1


def startable(status: Status) -> bool:
    """Whether a delivery may (re)start a task in `status`: queued, or running under a worker
    that was lost. An ended task is handed back unchanged for the worker to discard."""
    return not status.terminal


def attempts_after_start(attempts: int) -> int:
    """The attempt number a start records, given the attempts stored before it."""
    return attempts + ATTEMPT_PER_START


class Requeue(enum.Enum):
    """Why a running task goes back to the queue; it decides whether its attempt stays counted."""

    # Its child process died (segfault, OOM kill): counted, so a circuit that kills every
    # process it runs in ends in error after max_attempts.
    CRASHED = "crashed"
    # Its batch ran out of time: counted; it runs alone next, where a timeout is final.
    BATCH_TIMED_OUT = "batch_timed_out"
    # The worker stops (SIGTERM, past the grace) or was handed it while stopping, or a remote
    # submission was cut short by the stop: refunded, none of it was the circuit's doing.
    SHUTDOWN = "shutdown"

    @property
    def penalizes(self) -> bool:
        """Whether the attempt stays counted (TaskStore.release's `penalize`)."""
        return self is not Requeue.SHUTDOWN


def attempts_refunded(*, penalize: bool) -> int:
    """How many attempts a release gives back: the started one, unless it is penalized."""
    return 0 if penalize else ATTEMPT_PER_START


def attempts_after_release(attempts: int, *, penalize: bool) -> int:
    """The attempts stored after a release (never below zero)."""
    return max(attempts - attempts_refunded(penalize=penalize), 0)


# --- deliveries ------------------------------------------------------------------------------


class Redelivery(enum.Enum):
    """What a worker does with a task it was handed (a first delivery or any later one)."""

    RUN = "run"
    # The task already ended (a redelivery after a crash, a duplicate message, a cancel): the
    # delivery is acknowledged without running it again; the first outcome stands.
    DISCARD = "discard"
    # Its attempts are used up (this start counted one past max_attempts): it ends in error
    # with the reason of its last failure and is filed as a dead letter.
    DEAD_LETTER = "dead_letter"


def on_delivery(task: Task, max_attempts: int) -> Redelivery:
    """What to do with `task` as a delivery started it (attempts already counted)."""
    if task.status.terminal:
        return Redelivery.DISCARD
    if task.attempts > max_attempts:
        return Redelivery.DEAD_LETTER
    return Redelivery.RUN


def given_up_message(max_attempts: int, last_error: str | None) -> str:
    """The error a task given up on ends with (Redelivery.DEAD_LETTER)."""
    reason = last_error or "its worker was lost"
    return (
        f"The task was given up after {max_attempts} attempts; "
        f"the last one failed because {reason}."
    )
