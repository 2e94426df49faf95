"""Controlled fault injection for the experiment, reproducible from the seed (FR-013).

A `Fault` happens on one node just before a chosen job of the run (the run's logical clock: job
indices, so the same seed gives the same schedule however long each job takes) and is cleared
before another. Kinds:

- `latency`: the node's fault layer adds `latency_ms` before every reply (cleared: `clear`);
- `degrade`: the fault layer adds `extra_depolarizing` to the node's noise; it re-calibrates
  and re-advertises (cleared: `clear`);
- `stop`: SIGSTOP of the node's process group, a hung node: connection open, no replies
  (cleared: SIGCONT);
- `kill`: SIGKILL of the node's process group, a node drop (never cleared; last in order).

The fault layer is the node's (`qtask.mesh.faults`, `FAULT_PROTOCOL` with a `FaultRequest`),
served only by nodes started with `[mesh.node] faults_enabled = true` (the harness's nodes
are); a node without it refuses the stream and the fault is reported as not applied.
"""

from __future__ import annotations

import json
import random
import signal
from dataclasses import asdict, dataclass
from typing import Any, Literal

from qtask.errors import QTaskError
from qtask.mesh.experiment.cluster import Process
from qtask.mesh.host import MeshHost, call
from qtask.mesh.protocol import FAULT_PROTOCOL, FaultReply, FaultRequest

FaultKind = Literal["latency", "degrade", "stop", "kill"]
KINDS: tuple[FaultKind, ...] = ("latency", "degrade", "stop", "kill")
# Sizes: a spike well above a loopback round trip (~25 ms), a degradation that takes the
# best node below the others (the defaults' measured fidelities are ~0.97-0.99).
DEFAULT_VALUES: dict[str, float] = {"latency": 400.0, "degrade": 0.08, "stop": 0.0, "kill": 0.0}


@dataclass(frozen=True)
class Fault:
    """`kind` on node `node` (index) from just before job `at_job` until just before `until_job`."""

    kind: FaultKind
    node: int
    at_job: int
    until_job: int | None
    value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def schedule(
    seed: int, jobs: int, kinds: tuple[FaultKind, ...] = KINDS, node: int = 0
) -> list[Fault]:
    """One fault of each kind on `node`, in the order given, each in its own slice of the run.

    The run's jobs are cut into len(kinds) equal slices; a fault starts at a seeded position in
    the first half of its slice and is cleared at the slice's end (a kill is never cleared). The
    target is node 0, the best node, which both modes choose while it is healthy: a fault on a
    node nobody uses would show nothing.
    """
    if not kinds:
        return []
    rng = random.Random(seed)
    size = jobs // len(kinds)
    if size < 2:
        raise ValueError(f"{jobs} jobs are too few for {len(kinds)} faults (2 jobs per fault)")
    faults = []
    for i, kind in enumerate(kinds):
        start = i * size
        at = start + rng.randrange(0, max(1, size // 2))
        until = None if kind == "kill" else start + size
        faults.append(Fault(kind, node, at, until, DEFAULT_VALUES[kind]))
    return faults


class FaultInjector:
    """Applies and clears faults on a cluster's nodes; keeps a log of what it did."""

    def __init__(self, host: MeshHost, nodes: list[Process], faults: list[Fault]) -> None:
        self._host = host
        self._nodes = nodes
        self._faults = faults
        self.events: list[dict[str, Any]] = []

    async def before_job(self, job: int, clock: float) -> None:
        """Clear the faults that end at `job`, then apply those that start at it."""
        for fault in self._faults:
            if fault.until_job == job:
                await self._apply(fault, job, clock, clear=True)
        for fault in self._faults:
            if fault.at_job == job:
                await self._apply(fault, job, clock, clear=False)

    async def clear_all(self, job: int, clock: float) -> None:
        """At the end of a run: clear what is still active (SIGCONT a stopped node)."""
        for fault in self._faults:
            if fault.kind != "kill" and fault.at_job < job and (fault.until_job or 0) >= job:
                await self._apply(fault, job, clock, clear=True)

    async def _apply(self, fault: Fault, job: int, clock: float, *, clear: bool) -> None:
        node = self._nodes[fault.node]
        event: dict[str, Any] = {
            "job": job, "t_s": round(clock, 3), "kind": fault.kind, "node": node.name,
            "action": "clear" if clear else "set", "value": fault.value, "applied": True,
            "detail": "",
        }  # fmt: skip
        if fault.kind == "stop":
            node.signal(signal.SIGCONT if clear else signal.SIGSTOP)
        elif fault.kind == "kill":
            node.signal(signal.SIGKILL)
        else:
            request = FaultRequest(
                action="clear" if clear else "set",
                latency_ms=fault.value if fault.kind == "latency" else 0.0,
                extra_depolarizing=fault.value if fault.kind == "degrade" else 0.0,
            )
            try:
                reply = await call(
                    self._host, node.peer_id, FAULT_PROTOCOL, request, FaultReply, timeout=5.0
                )
                event["applied"] = reply.ok
                event["detail"] = json.dumps(reply.active, sort_keys=True)
                if reply.error is not None:
                    event["detail"] = f"{reply.error.code}: {reply.error.message}"
            except QTaskError as exc:
                event["applied"] = False
                event["detail"] = f"no fault layer: {exc}"[:200]
        self.events.append(event)
