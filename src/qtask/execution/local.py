"""The entry points of a worker's child processes for local backends: each item runs on the
backend its task names, ideal Aer (execution.aer), Aer with a device's noise
(execution.devices) or Amazon Braket's local simulator (execution.braket_local), batches
included.

Which configured backend is which comes from the worker's settings at child start
(`init_process`), so a child never reads the configuration itself.
"""

from __future__ import annotations

from collections import defaultdict

from qtask.execution import aer, braket_local, devices
from qtask.execution.items import RunItem, RunOutcome

# Backend name -> its fake device, braket_local.SIMULATOR for Braket's, None for ideal Aer;
# set when the child starts.
_backends: dict[str, str | None] = {"aer": None}


def init_process(
    threads: int,
    max_statevector_mb: int,
    device: str = "auto",
    backends: dict[str, str | None] | None = None,
) -> None:
    """Build ideal Aer's simulator now and remember the backends; device simulators are built
    when a task first names them (worker start-up stays fast)."""
    aer.init_process(threads, max_statevector_mb, device)
    devices.configure(threads, 2 * max_statevector_mb)
    if backends is not None:
        _backends.clear()
        _backends.update(backends)


def run_items(items: list[RunItem]) -> list[RunOutcome]:
    """Run every item on its backend; a failure of one item is reported on that item alone."""
    ideal: list[RunItem] = []
    by_device: dict[str, list[RunItem]] = defaultdict(list)
    braket: list[RunItem] = []
    outcomes: dict[str, RunOutcome] = {}
    for item in items:
        if item.backend not in _backends:  # configured at the API, not at this worker
            known = ", ".join(_backends)
            error = f"This worker has no backend {item.backend!r} (it has {known})."
            outcomes[item.task_id] = RunOutcome(item.task_id, error=error)
        elif (noisy := _backends[item.backend]) is None:
            ideal.append(item)
        elif noisy == braket_local.SIMULATOR:
            braket.append(item)
        else:
            by_device[noisy].append(item)
    if ideal:
        outcomes.update((o.task_id, o) for o in aer.run_items(ideal))
    for device, group in by_device.items():
        outcomes.update((o.task_id, o) for o in devices.run_items(group, device))
    if braket:
        outcomes.update((o.task_id, o) for o in braket_local.run_items(braket))
    return [outcomes[item.task_id] for item in items]
