"""FR-005: the reservation book's rules and invariants (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from qtask.mesh.protocol import ReserveRequest
from qtask.mesh.reservations import (
    EVENTS,
    ReservationBook,
    ReservationExpired,
    fold,
)

NOW = 1000.0


def request(rid: str, start: float, end: float, **changes: Any) -> ReserveRequest:
    return ReserveRequest(
        correlation_id=f"c-{rid}", reservation_id=rid, window_start=start, window_end=end,
        **changes,
    )  # fmt: skip


def max_overlap(book: ReservationBook) -> int:
    instants = {r.window_start for r in book.active()}
    return max((book.in_use_at(t) for t in instants), default=0)


def test_conflict_is_rejected_with_the_next_window_that_is_then_accepted() -> None:
    book = ReservationBook(capacity=1)
    assert book.reserve(request("a", 1010, 1020), now=NOW, fidelity=0.9).accepted
    conflict = book.reserve(request("b", 1015, 1018), now=NOW, fidelity=0.9)
    assert (conflict.accepted, conflict.code, conflict.next_window) == (
        False,
        "capacity",
        (1020, 1023),
    )
    assert book.reserve(request("c", 1020, 1023), now=NOW, fidelity=0.9).accepted


def test_capacity_two_takes_two_overlapping_windows_not_three() -> None:
    book = ReservationBook(capacity=2)
    assert book.reserve(request("a", 1000, 1010), now=NOW, fidelity=1).accepted
    assert book.reserve(request("b", 1005, 1015), now=NOW, fidelity=1).accepted
    third = book.reserve(request("c", 1008, 1009), now=NOW, fidelity=1)
    assert third.next_window == (1010, 1011)
    assert book.reserve(request("d", 1010, 1012), now=NOW, fidelity=1).accepted


def test_low_fidelity_is_rejected_without_a_next_window() -> None:
    book = ReservationBook(capacity=1)
    decision = book.reserve(request("a", 1000, 1010, min_fidelity=0.95), now=NOW, fidelity=0.9)
    assert (decision.accepted, decision.code, decision.next_window) == (
        False,
        "fidelity_too_low",
        None,
    )
    assert "0.9000" in decision.reason


def test_past_and_empty_windows_are_rejected() -> None:
    book = ReservationBook(capacity=1)
    past = book.reserve(request("a", 900, 950), now=NOW, fidelity=1)
    assert (past.code, past.next_window) == ("window_past", (NOW, NOW + 50))
    assert book.reserve(request("b", 1010, 1010), now=NOW, fidelity=1).code == "invalid_window"


def test_release_and_expiry_free_the_slot() -> None:
    book = ReservationBook(capacity=1)
    assert book.reserve(request("a", 1000, 1010), now=NOW, fidelity=1).accepted
    assert book.release("a", now=NOW + 1)
    assert not book.release("a", now=NOW + 1)  # already released
    assert book.reserve(request("b", 1000, 1010), now=NOW + 1, fidelity=1).accepted
    assert book.expire(1009.9) == []
    assert book.expire(1010) == ["b"]
    assert book.state["b"].status == "expired"
    assert book.state["a"].status == "released"
    assert book.active() == []


def test_retry_of_an_accepted_reservation_is_idempotent_and_reuse_is_refused() -> None:
    book = ReservationBook(capacity=1)
    assert book.reserve(request("a", 1000, 1010), now=NOW, fidelity=1).accepted
    events = len(book.events)
    assert book.reserve(request("a", 1000, 1010), now=NOW + 1, fidelity=1).accepted
    assert len(book.events) == events
    assert book.reserve(request("a", 1000, 1020), now=NOW, fidelity=1).code == (
        "duplicate_reservation"
    )


def test_events_round_trip_as_json_and_rebuild_the_book() -> None:
    book = ReservationBook(capacity=1)
    book.reserve(request("a", 1000, 1010, job_id="j1"), now=NOW, fidelity=1)
    book.reserve(request("b", 1000, 1010), now=NOW, fidelity=1)
    book.expire(1010)
    data = EVENTS.dump_json(list(book.events))
    events = EVENTS.validate_json(data)
    assert events == list(book.events)
    assert isinstance(events[-1], ReservationExpired)
    assert ReservationBook(1, events).state == book.state
    assert book.state["a"].job_id == "j1"


# -- properties ---------------------------------------------------------------------------

windows = st.tuples(
    st.integers(min_value=0, max_value=200), st.integers(min_value=1, max_value=40)
).map(lambda sd: (NOW + sd[0] / 2, NOW + sd[0] / 2 + sd[1] / 4))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 30), windows),
        st.tuples(st.just("release"), st.integers(0, 30), st.none()),
        st.tuples(st.just("advance"), st.integers(1, 20), st.none()),
    ),
    max_size=60,
)


def play(book: ReservationBook, ops: list[tuple[str, int, Any]]) -> float:
    now = NOW
    for kind, n, window in ops:
        if kind == "reserve":
            book.reserve(request(f"r{n}", *window), now=now, fidelity=0.95)
        elif kind == "release":
            book.release(f"r{n}", now=now)
        else:
            now += n
            book.expire(now)
        assert max_overlap(book) <= book.capacity
    return now


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 3), ops=operations)
def test_no_instant_is_ever_over_capacity(capacity: int, ops: list[tuple[str, int, Any]]) -> None:
    play(ReservationBook(capacity), ops)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 3), ops=operations)
def test_fold_of_the_events_equals_the_live_state(
    capacity: int, ops: list[tuple[str, int, Any]]
) -> None:
    book = ReservationBook(capacity)
    play(book, ops)
    assert fold(book.events) == dict(book.state)
    assert fold(EVENTS.validate_json(EVENTS.dump_json(list(book.events)))) == dict(book.state)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 3), ops=operations, window=windows)
def test_offered_next_window_is_accepted_when_requested_at_once(
    capacity: int, ops: list[tuple[str, int, Any]], window: tuple[float, float]
) -> None:
    book = ReservationBook(capacity)
    now = play(book, ops)
    decision = book.reserve(request("probe", *window), now=now, fidelity=0.95)
    if decision.accepted or decision.next_window is None:
        return
    retry = book.reserve(request("retry", *decision.next_window), now=now, fidelity=0.95)
    assert retry.accepted, (decision, retry)
    assert decision.next_window[0] >= now
