"""What batch long polls (GET /tasks?ids=...&wait=S) cost the service while their tasks end.

    .venv/bin/python benchmarks/batch_wait.py [--polls 10] [--ids 100] [--per-turn 1 10 50]

In process, over the in-memory store (which notifies ends as the embedded store does):
`--polls` waits of `--ids` tasks each (TaskService.wait_many, what the route calls), while
every task completes, `--per-turn` of them per event-loop turn (interleaved across the polls,
as workers finish them). Prints, per row, the CPU of the whole run from the first end to the
last answer, and how many task ids the waits read from the store in all (at least 2 per task:
once at first, once after its end). No HTTP and no worker: this is the waiting's own cost,
the part a batch client's long poll adds to the API. Asserts nothing on time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from qtask.application.service import Submission, TaskService
from qtask.application.waiters import Waiters
from qtask.circuits.ingestor import CircuitIngestor
from qtask.config import LimitsSettings
from qtask.domain.task import TaskOutcome
from qtask.execution.catalog import aer_only
from qtask.testing import InMemoryTaskStore

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)


class CountingStore(InMemoryTaskStore):
    """The in-memory store, counting the ids outcomes() is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.ids_read = 0

    async def outcomes(self, task_ids: Sequence[str]) -> dict[str, TaskOutcome]:
        self.ids_read += len(task_ids)
        return await super().outcomes(task_ids)


async def row(polls: int, ids: int, per_turn: int) -> str:
    store = CountingStore()
    settings = LimitsSettings()
    waiters = Waiters()
    store.listen(waiters.ended, waiters.resync)
    service = TaskService(
        store,
        store,
        CircuitIngestor(settings, pool=None),
        settings,
        waiters=waiters,
        backends=aer_only(settings),
    )
    task_ids = [(await service.submit(Submission(BELL, 10))).id for _ in range(polls * ids)]
    groups = [task_ids[i * ids : (i + 1) * ids] for i in range(polls)]
    waiting = [asyncio.create_task(service.wait_many(group, None, 60)) for group in groups]
    await asyncio.sleep(0.01)  # every poll has read once and waits
    store.ids_read = 0
    started = time.process_time()
    order = [group[i] for i in range(ids) for group in groups]
    for k in range(0, len(order), per_turn):
        for task_id in order[k : k + per_turn]:
            await store.complete(task_id, {"00": 1})
        await asyncio.sleep(0)
    answers = await asyncio.gather(*waiting)
    cpu = time.process_time() - started
    if any(len(answer) != ids for answer in answers):
        raise SystemExit("a poll answered before all of its tasks ended")
    total = polls * ids
    return (
        f"| {polls} × {ids} | {per_turn} | {1000 * cpu:.1f} | {1e6 * cpu / total:.1f} "
        f"| {store.ids_read + total} | {(store.ids_read + total) / total:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=10)
    parser.add_argument("--ids", type=int, default=100)
    parser.add_argument("--per-turn", type=int, nargs="+", default=[1, 10, 50])
    args = parser.parse_args()
    print("| polls × ids | ends per loop turn | CPU ms | CPU µs per task | ids read | per task |")
    print("|---|---|---|---|---|---|")
    for per_turn in args.per_turn:
        print(asyncio.run(row(args.polls, args.ids, per_turn)))


if __name__ == "__main__":
    main()
