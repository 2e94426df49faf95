"""Listing tasks: the API's status names, the page a caller gets, and its opaque cursor.

No I/O here; TaskService.list_tasks reads the store (TaskStore.page) and uses these.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from qtask.domain.ports import ListedTask, ListPosition
from qtask.domain.task import Status
from qtask.errors import InvalidRequestError

# The listing's status names are the API's (the seed's bodies): `pending` is every state before
# the end, `error` a failed task.
LIST_STATUSES: dict[str, frozenset[Status]] = {
    "pending": frozenset({Status.QUEUED, Status.RUNNING}),
    "completed": frozenset({Status.COMPLETED}),
    "error": frozenset({Status.FAILED}),
}


def encode_cursor(position: ListPosition) -> str:
    """An opaque cursor for a listing position (URL-safe, no padding)."""
    created_at, task_id = position
    raw = f"{created_at!r}|{task_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> ListPosition:
    """The position a cursor from encode_cursor names; InvalidRequestError for any other."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, task_id = raw.split("|", 1)
        position = (float(created), task_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequestError(
            "The cursor is not one this server gave out; use next_cursor from a listing."
        ) from None
    return position


@dataclass(frozen=True, slots=True)
class Listing:
    """One page of a caller's tasks, newest first, and the cursor of the next (None: no more)."""

    tasks: list[ListedTask]
    next_cursor: str | None
