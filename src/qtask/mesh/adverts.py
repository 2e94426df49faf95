"""FR-001 adverts: the receipt side (`AdvertInbox`) and the publishing side (`AdvertPublisher`).

Receipt: a gossip message on ADVERT_TOPIC is believed only after it parses as an `Advert`
(pydantic, extra fields forbidden), names a protocol version we speak, and passes
`validate_advert` with the peer that *signed* the message (gossipsub proves the signer, not the
claim inside). Each refusal is logged (`advert_rejected`: the node it names, the signer, the
reason code and detail) and counted (`qtask_mesh_adverts_rejected{reason}`). An advert older
(by `seq`) than one already accepted from that node is dropped and counted as `stale`, logged
only at debug (`advert_stale`): gossip reorders messages that took different paths.

Publishing: a node re-advertises every `interval_s` and at once when something in its advert
changes (`changed()`); `seq` starts at the node's start time in milliseconds and goes up by one
per advert, so it keeps increasing across restarts of the same identity.

No libp2p here: the inbox is a `(signer, data)` gossip handler and the publisher calls a
`publish(topic, data)` coroutine, so both are unit-tested without a network.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from qtask.logs import get_logger
from qtask.mesh import metrics
from qtask.mesh.protocol import ADVERT_TOPIC, PROTOCOL_VERSION, Advert, validate_advert

log = get_logger("mesh.adverts")

RejectReason = Literal["schema", "version", "forged", "future", "capacity", "stale"]
REJECT_REASONS: tuple[RejectReason, ...] = (
    "schema",
    "version",
    "forged",
    "future",
    "capacity",
    "stale",
)

AdvertCallback = Callable[[Advert], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Rejection:
    """Why an advert is refused: a reason code (a metric label), words for people, and the
    node it names when that much could be read."""

    reason: RejectReason
    detail: str
    node_id: str | None = None


def check_advert(data: bytes, *, signer: str, now: float) -> Advert | Rejection:
    """The advert in `data`, or why it is refused."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return Rejection("schema", f"not JSON: {exc}")
    claimed = raw.get("node_id") if isinstance(raw, dict) else None
    node = claimed if isinstance(claimed, str) else None
    if isinstance(raw, dict) and raw.get("version", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        return Rejection("version", f"unknown protocol version {raw.get('version')!r}", node)
    try:
        advert = Advert.model_validate(raw)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'advert'}: {e['msg']}" for e in exc.errors()
        )
        return Rejection("schema", errors, node)
    problem = validate_advert(advert, signer=signer, now=now)
    if problem is None:
        return advert
    # validate_advert's messages start with the field at fault (a unit test pins these).
    if problem.startswith("node_id"):
        return Rejection("forged", problem, node)
    if problem.startswith("timestamp"):
        return Rejection("future", problem, node)
    return Rejection("capacity", problem, node)


class AdvertInbox:
    """A gossip handler for ADVERT_TOPIC that passes on only valid, newer adverts."""

    def __init__(self, callback: AdvertCallback, *, clock: Clock = time.time) -> None:
        self._callback = callback
        self._clock = clock
        self._last_seq: dict[str, int] = {}

    async def __call__(self, signer: str, data: bytes) -> None:
        """Check one gossip message; hand the advert to the callback or log and count why not."""
        checked = check_advert(data, signer=signer, now=self._clock())
        if isinstance(checked, Rejection):
            self._reject(signer, checked)
            return
        last = self._last_seq.get(checked.node_id)
        if last is not None and checked.seq <= last:
            # Gossip may deliver one node's adverts out of order (two paths): not an attack,
            # so counted but logged only at debug.
            metrics.ADVERTS_REJECTED.labels("stale").inc()
            log.debug("advert_stale", node=checked.node_id, seq=checked.seq, newest=last)
            return
        self._last_seq[checked.node_id] = checked.seq
        metrics.ADVERTS_ACCEPTED.inc()
        await self._callback(checked)

    def forget(self, node_id: str) -> None:
        """Drop what is known of a node's seq (e.g. when the registry removes it)."""
        self._last_seq.pop(node_id, None)

    @staticmethod
    def _reject(signer: str, rejection: Rejection) -> None:
        metrics.ADVERTS_REJECTED.labels(rejection.reason).inc()
        log.warning(
            "advert_rejected",
            node=rejection.node_id or signer,
            signer=signer,
            reason=rejection.reason,
            detail=rejection.detail,
        )


class AdvertPublisher:
    """Publishes `make(seq, now)` every `interval_s`, and at once after `changed()`."""

    def __init__(
        self,
        publish: Callable[[str, bytes], Awaitable[None]],
        make: Callable[[int, float], Advert],
        *,
        interval_s: float,
        coalesce_s: float = 0.0,
        clock: Clock = time.time,
    ) -> None:
        self._publish = publish
        self._make = make
        self._interval_s = interval_s
        self._coalesce_s = coalesce_s
        self._clock = clock
        self._seq = int(clock() * 1000)
        self._changed = asyncio.Event()
        self._trigger: Literal["interval", "change"] = "interval"  # what the next turn says
        self.last: Advert | None = None

    def changed(self) -> None:
        """Something in the advert changed: publish it now (changes in a burst coalesce)."""
        self._changed.set()

    async def publish_once(self, trigger: Literal["interval", "change"] = "interval") -> Advert:
        """Build and publish one advert with the next seq."""
        self._seq += 1
        advert = self._make(self._seq, self._clock())
        await self._publish(ADVERT_TOPIC, advert.model_dump_json().encode())
        metrics.ADVERTS_PUBLISHED.labels(trigger).inc()
        self.last = advert
        return advert

    async def run(self) -> None:
        """Publish until cancelled: turn() after turn()."""
        while True:
            await self.turn()

    async def turn(self) -> None:
        """Publish one advert (a failure is logged: the next turn may succeed), then wait for
        a change, or `interval_s` at most; a node runs its turns as a supervised loop."""
        self._changed.clear()
        try:
            await self.publish_once(self._trigger)
        except Exception as exc:  # keep advertising: the next turn may succeed
            log.warning("advert_publish_failed", error=repr(exc))
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # lands as the event is set, and the loop would outlive its node's stop().
        try:
            async with asyncio.timeout(self._interval_s):
                await self._changed.wait()
            self._trigger = "change"
            if self._coalesce_s:
                # A fragment's reserve, start, end and release come within tens of ms:
                # one advert for the burst, not one each.
                await asyncio.sleep(self._coalesce_s)
        except TimeoutError:
            self._trigger = "interval"
