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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask.application.service import Submission
from qtask_testkit import BELL, CountingStore, in_memory_service


async def row(polls: int, ids: int, per_turn: int) -> str:
    store = CountingStore()
    service = in_memory_service(store)
    task_ids = [(await service.submit(Submission(BELL, 10))).id for _ in range(polls * ids)]
    groups = [task_ids[i * ids : (i + 1) * ids] for i in range(polls)]
    waiting = [asyncio.create_task(service.wait_many(group, None, 60)) for group in groups]
    await asyncio.sleep(0.01)  # every poll has read once and waits
    store.asked.clear()
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
    read = sum(map(len, store.asked))
    return (
        f"| {polls} × {ids} | {per_turn} | {1000 * cpu:.1f} | {1e6 * cpu / total:.1f} "
        f"| {read + total} | {(read + total) / total:.1f} |"
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
