"""A node's fault layer (mesh part 2, FR-013): latency, dropped requests and fidelity
degradation injected in the node's own transport, without root (no netem), reproducibly.

`FaultLayer` holds the faults now active (a `FaultRequest`, until its `duration_s` ends) and
wraps the node's request handlers: a dropped request raises `InjectedDropError`, which the
host answers with a stream reset (what a peer sees of a broken connection); `latency_ms` is
slept after the handler and before its reply leaves, so it counts against the caller's
timeout. Drops draw from a `random.Random(seed)`, so the same seed and request sequence drop
the same requests. `extra_depolarizing` is applied by the node to its noise model
(`effective_noise`), which then re-calibrates and re-advertises its measured fidelity.

Served on FAULT_PROTOCOL only when `[mesh.node] faults_enabled = true` (off by default: it is a
test and experiment hook); `[mesh.node] faults` sets faults from the start. The fault protocol
itself is never delayed or dropped. No libp2p here: the node wires it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from qtask.errors import QTaskError
from qtask.mesh.protocol import FaultRequest, NoiseSpec

Handler = Callable[[str, bytes], Awaitable[bytes]]


class InjectedDropError(QTaskError):
    """Raised by a wrapped handler for a request the fault layer drops (the host resets the
    stream)."""


def effective_noise(base: NoiseSpec, extra_depolarizing: float) -> NoiseSpec:
    """The node's noise with `extra_depolarizing` added to its 1- and 2-qubit errors (capped
    at 1)."""
    if extra_depolarizing <= 0:
        return base
    return NoiseSpec(
        depolarizing_1q=min(1.0, base.depolarizing_1q + extra_depolarizing),
        depolarizing_2q=min(1.0, base.depolarizing_2q + extra_depolarizing),
        readout=base.readout,
    )


class FaultLayer:
    """The faults active on one node, and the wrapper that applies them to requests."""

    def __init__(
        self,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rng = random.Random(seed)
        self._clock = clock
        self._sleep = sleep
        self._fault: FaultRequest | None = None
        self._until: float | None = None
        self.dropped = 0
        self.delayed = 0

    def apply(self, request: FaultRequest) -> None:
        """Set (replacing what was active) or clear the faults."""
        if request.action == "clear" or not (
            request.latency_ms or request.drop_rate or request.extra_depolarizing
        ):
            self._fault, self._until = None, None
            return
        self._fault = request
        self._until = None if request.duration_s is None else self._clock() + request.duration_s

    def current(self) -> FaultRequest | None:
        """The active faults, or None (none set, cleared, or their duration ended)."""
        if self._fault is not None and self._until is not None and self._clock() >= self._until:
            self._fault, self._until = None, None
        return self._fault

    def remaining_s(self) -> float | None:
        """Seconds until the active faults clear themselves; None when they do not."""
        if self.current() is None or self._until is None:
            return None
        return max(0.0, self._until - self._clock())

    @property
    def extra_depolarizing(self) -> float:
        """The depolarizing probability added to the node's noise now."""
        fault = self.current()
        return 0.0 if fault is None else fault.extra_depolarizing

    def active(self) -> dict[str, float]:
        """The active faults as numbers (FaultReply.active); empty when none."""
        fault = self.current()
        if fault is None:
            return {}
        out = {
            "latency_ms": fault.latency_ms,
            "drop_rate": fault.drop_rate,
            "extra_depolarizing": fault.extra_depolarizing,
        }
        remaining = self.remaining_s()
        if remaining is not None:
            out["remaining_s"] = remaining
        return out

    def wrap(self, handler: Handler) -> Handler:
        """`handler` with the active drop and latency applied to each request."""

        async def faulty(peer: str, data: bytes) -> bytes:
            fault = self.current()
            if fault is not None and fault.drop_rate and self._rng.random() < fault.drop_rate:
                self.dropped += 1
                raise InjectedDropError("request dropped by the fault layer")
            reply = await handler(peer, data)
            fault = self.current()
            if fault is not None and fault.latency_ms:
                self.delayed += 1
                await self._sleep(fault.latency_ms / 1000)
            return reply

        return faulty
