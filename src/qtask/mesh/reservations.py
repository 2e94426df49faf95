"""FR-005: a node's reservation book, event-sourced. Pure domain: no I/O, no clock of its own.

Every decision appends events (requested, then accepted or rejected; later released or
expired); the current state is `fold(events)`, and the live book keeps its state by applying
the same `apply` to each event it appends, so a coordinator that persists the events (their
JSON form: `EVENTS.dump_json`, `EVENTS.validate_json`) rebuilds exactly the node's state.

The rules:
- A node has `capacity` slots: at most `capacity` accepted reservations overlap at any instant
  (windows are half-open, [start, end)).
- A request is accepted when its window fits and the node's measured fidelity is at least the
  request's `min_fidelity`; otherwise it is rejected with a stable code, the reason, and (when
  waiting helps) the earliest window of the same length that would be accepted if requested at
  once.
- `release` frees an accepted reservation at once (the coordinator is done, or cancelled);
  `expire(now)` releases every accepted reservation whose window has ended, used or not.
- Asking again with an accepted reservation's id and window is answered "accepted" again and
  appends nothing (a coordinator's retry); any other reuse of an id is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from qtask.mesh.protocol import ReserveRequest

Status = Literal["requested", "accepted", "rejected", "released", "expired"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reservation_id: str
    at: float  # unix seconds of the decision


class ReservationRequested(_Event):
    """A request arrived (always the first event of a reservation)."""

    kind: Literal["requested"] = "requested"
    correlation_id: str = ""
    job_id: str = ""
    fragment_id: str = ""
    operation: str = "execute"
    window_start: float
    window_end: float
    min_fidelity: float = 0.0


class ReservationAccepted(_Event):
    kind: Literal["accepted"] = "accepted"


class ReservationRejected(_Event):
    kind: Literal["rejected"] = "rejected"
    code: str
    reason: str
    next_window: tuple[float, float] | None = None


class ReservationReleased(_Event):
    kind: Literal["released"] = "released"


class ReservationExpired(_Event):
    kind: Literal["expired"] = "expired"


ReservationEvent = Annotated[
    ReservationRequested
    | ReservationAccepted
    | ReservationRejected
    | ReservationReleased
    | ReservationExpired,
    Field(discriminator="kind"),
]
# JSON form of a list of events, for whoever persists or ships them.
EVENTS: TypeAdapter[list[ReservationEvent]] = TypeAdapter(list[ReservationEvent])


@dataclass(frozen=True)
class Reservation:
    """One reservation as the events left it."""

    reservation_id: str
    window_start: float
    window_end: float
    status: Status
    correlation_id: str = ""
    job_id: str = ""
    fragment_id: str = ""
    min_fidelity: float = 0.0


@dataclass(frozen=True)
class Decision:
    """The answer to a request: accepted, or a code, a reason and maybe a next window."""

    accepted: bool
    code: str = ""
    reason: str = ""
    next_window: tuple[float, float] | None = None


def apply(state: dict[str, Reservation], event: ReservationEvent) -> None:
    """Apply one event to `state` in place (the only way state changes)."""
    if isinstance(event, ReservationRequested):
        state[event.reservation_id] = Reservation(
            reservation_id=event.reservation_id,
            window_start=event.window_start,
            window_end=event.window_end,
            status="requested",
            correlation_id=event.correlation_id,
            job_id=event.job_id,
            fragment_id=event.fragment_id,
            min_fidelity=event.min_fidelity,
        )
        return
    current = state.get(event.reservation_id)
    if current is None:
        return  # an event about a reservation never requested: nothing to change
    state[event.reservation_id] = replace(current, status=event.kind)


def fold(events: Iterable[ReservationEvent]) -> dict[str, Reservation]:
    """The state a sequence of events leaves."""
    state: dict[str, Reservation] = {}
    for event in events:
        apply(state, event)
    return state


class ReservationBook:
    """A node's reservations: decisions append events; state is their fold."""

    def __init__(self, capacity: int, events: Iterable[ReservationEvent] = ()) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._events: list[ReservationEvent] = []
        self._state: dict[str, Reservation] = {}
        for event in events:
            self._record(event)

    @property
    def events(self) -> tuple[ReservationEvent, ...]:
        """Every event so far, oldest first."""
        return tuple(self._events)

    @property
    def state(self) -> Mapping[str, Reservation]:
        """Reservations by id (read-only)."""
        return MappingProxyType(self._state)

    def active(self) -> list[Reservation]:
        """Accepted reservations not yet released or expired."""
        return [r for r in self._state.values() if r.status == "accepted"]

    def in_use_at(self, instant: float) -> int:
        """How many accepted reservations hold a slot at `instant`."""
        return sum(1 for r in self.active() if r.window_start <= instant < r.window_end)

    def reserve(self, request: ReserveRequest, *, now: float, fidelity: float) -> Decision:
        """Decide a reservation request (module docstring: the rules)."""
        rid = request.reservation_id
        start, end = request.window_start, request.window_end
        existing = self._state.get(rid)
        if existing is not None:
            if existing.status == "accepted" and (existing.window_start, existing.window_end) == (
                start,
                end,
            ):
                return Decision(True)
            return Decision(
                False, "duplicate_reservation", f"reservation {rid} is already {existing.status}"
            )
        self._record(
            ReservationRequested(
                reservation_id=rid,
                at=now,
                correlation_id=request.correlation_id,
                job_id=request.job_id,
                fragment_id=request.fragment_id,
                operation=request.operation,
                window_start=start,
                window_end=end,
                min_fidelity=request.min_fidelity,
            )
        )
        if end <= start:
            return self._reject(rid, now, "invalid_window", f"window end {end} <= start {start}")
        duration = end - start
        if end <= now:
            return self._reject(
                rid, now, "window_past", f"window ended at {end} before now ({now})",
                self.next_window(duration, earliest=now),
            )  # fmt: skip
        if fidelity < request.min_fidelity:
            return self._reject(
                rid, now, "fidelity_too_low",
                f"measured fidelity {fidelity:.4f} is below the required {request.min_fidelity}",
            )  # fmt: skip
        if not self.fits(start, end):
            return self._reject(
                rid, now, "capacity",
                f"all {self.capacity} slots are reserved during [{start}, {end})",
                self.next_window(duration, earliest=max(start, now)),
            )  # fmt: skip
        self._record(ReservationAccepted(reservation_id=rid, at=now))
        return Decision(True)

    def release(self, reservation_id: str, *, now: float) -> bool:
        """Free an accepted reservation; False if it is not accepted (unknown, or ended)."""
        current = self._state.get(reservation_id)
        if current is None or current.status != "accepted":
            return False
        self._record(ReservationReleased(reservation_id=reservation_id, at=now))
        return True

    def expire(self, now: float) -> list[str]:
        """Release every accepted reservation whose window has ended; their ids."""
        ended = [r.reservation_id for r in self.active() if r.window_end <= now]
        for rid in ended:
            self._record(ReservationExpired(reservation_id=rid, at=now))
        return ended

    def fits(self, start: float, end: float) -> bool:
        """Whether one more reservation over [start, end) keeps every instant within capacity."""
        overlapping = [r for r in self.active() if r.window_start < end and r.window_end > start]
        if len(overlapping) < self.capacity:
            return True
        # The count over [start, end) only rises at a window's start: check those instants.
        instants = {start} | {r.window_start for r in overlapping if r.window_start > start}
        return all(
            sum(1 for r in overlapping if r.window_start <= t < r.window_end) < self.capacity
            for t in instants
        )

    def next_window(self, duration: float, *, earliest: float) -> tuple[float, float]:
        """The earliest [t, t + duration) with t >= earliest that `reserve` would accept."""
        # A free window starts at `earliest` or when some reservation ends.
        ends = sorted({r.window_end for r in self.active() if r.window_end > earliest})
        for t in [earliest, *ends]:
            if self.fits(t, t + duration):
                return (t, t + duration)
        raise AssertionError("unreachable: after the last end every slot is free")

    def _reject(
        self,
        rid: str,
        now: float,
        code: str,
        reason: str,
        next_window: tuple[float, float] | None = None,
    ) -> Decision:
        self._record(
            ReservationRejected(
                reservation_id=rid, at=now, code=code, reason=reason, next_window=next_window
            )
        )
        return Decision(False, code, reason, next_window)

    def _record(self, event: ReservationEvent) -> None:
        self._events.append(event)
        apply(self._state, event)
