"""What a reconciler pass costs as the store fills with ended tasks, with and without a lost stream.

    .venv/bin/python benchmarks/reaper.py [--sizes 10000 1000000] [--active 1000]

For each size N: a fresh redis-server (AOF on, as in the tests) and nats-server (JetStream) on
free ports; N ended tasks written straight into Redis by a Lua loop (small hashes, the finished
set and the counters, as the store's scripts leave them) plus `--active` queued and running tasks
stored and published through the real store and queue. Then it times:

- a normal pass: `Reconciler.run_once()` with the stream healthy (median of `--passes`);
- a pass after a loss: the stream deleted, then one `run_once()` that notices, creates the
  stream again and publishes every active task into it (median of `--losses`; the queue's
  one-second wait before re-creating a deleted stream is left out here: the benchmark waits
  0.2 s after the delete instead, outside the timing);
- the one-time backfill of the active index (`index_active()`, a SCAN of every task), as after an
  upgrade from a qtask without the index;

and prints a table and the ratios of the largest size to the smallest. At the smallest size it
also times, with a reconciler running in the background at the default interval (2 s), how long
after the stream is deleted (or nats-server restarted on empty storage) every active task is in
the stream again. Never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
import redis.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask.adapters import nats_queue
from qtask.adapters.nats_queue import NatsTaskQueue
from qtask.adapters.redis_store import RedisTaskStore
from qtask.application.reconciler import Reconciler
from qtask.logs import configure
from qtask_testkit import make_task
from servers import NatsServer, RedisServer

STREAM = "QTASK"
# Ended tasks written per script call: ~10k HSETs keep one call well under Redis's busy limit.
_FILL_CHUNK = 10_000

_FILL_LUA = """
-- ARGV: first index, count, now. Writes ended tasks as the store's scripts leave them.
local first, count, now = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
for i = first, first + count - 1 do
  local id = string.format('%08x-0000-4000-8000-%012x', i, i)
  redis.call('HSET', 'qtask:task:' .. id, 'id', id, 'status', 'completed', 'source', 'x',
    'info', '{}', 'shots', '1', 'attempts', '1', 'created_at', now, 'finished_at', now,
    'result', '{"0":1}')
  redis.call('ZADD', 'qtask:finished', now, id)
end
redis.call('HINCRBY', 'qtask:counts', 'completed', count)
return count
"""


async def fill(url: str, ended: int) -> float:
    """Write `ended` ended tasks; return the seconds it took."""
    client = redis.asyncio.Redis.from_url(url)
    script = client.register_script(_FILL_LUA)
    began = time.perf_counter()
    for first in range(0, ended, _FILL_CHUNK):
        await script(args=[first, min(_FILL_CHUNK, ended - first), repr(time.time())])
    await client.aclose()
    return time.perf_counter() - began


async def redis_memory_mb(url: str) -> float:
    client = redis.asyncio.Redis.from_url(url)
    info = await client.info("memory")
    await client.aclose()
    return float(info["used_memory"]) / 2**20


async def measure(directory: Path, ended: int, active: int, passes: int, losses: int) -> dict:
    redis_server = RedisServer(directory / "redis")
    nats_server = NatsServer(directory / "nats")
    redis_server.start()
    nats_server.start()
    try:
        fill_s = await fill(redis_server.url, ended)
        store = RedisTaskStore(redis_server.url)
        queue = NatsTaskQueue(nats_server.url, store, worker_id="bench")
        await queue.connect()
        reconciler = Reconciler(store, queue, interval=60.0)  # a loss is repaired in one pass
        await reconciler.run_once()  # backfill marker, stream recorded
        tasks = await store.create_many([make_task() for _ in range(active)])
        await queue.publish(tasks)
        for task in tasks[: active // 10]:  # a tenth running
            await store.start(task.id, "w")
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()

        normal = []
        for _ in range(passes):
            began = time.perf_counter()
            assert await reconciler.run_once() == 0
            normal.append(time.perf_counter() - began)

        after_loss = []
        wait, nats_queue.STREAM_RECREATE_DELAY_S = nats_queue.STREAM_RECREATE_DELAY_S, 0.0
        for _ in range(losses):
            lost = (await js.stream_info(STREAM)).created
            await js.delete_stream(STREAM)
            await asyncio.sleep(0.2)  # the server finishes deleting (see the queue's wait)
            began = time.perf_counter()
            republished = await reconciler.run_once()
            after_loss.append(time.perf_counter() - began)
            assert republished == active, republished
            info = await js.stream_info(STREAM)
            assert info.created != lost
            assert info.state.messages == active
            # The queue told the reconciler it created the stream: that check runs now (and
            # finds nothing to do) rather than during the next delete.
            await asyncio.sleep(0.1)
        nats_queue.STREAM_RECREATE_DELAY_S = wait

        client = redis.asyncio.Redis.from_url(redis_server.url)
        await client.delete("qtask:marker:active_index", "qtask:active")
        began = time.perf_counter()
        added = await store.index_active()
        backfill_s = time.perf_counter() - began
        await client.aclose()
        assert added == active, added

        memory = await redis_memory_mb(redis_server.url)
        await nc.close()
        await queue.close()
        await store.close()
        return {
            "ended": ended,
            "active": active,
            "fill_s": fill_s,
            "normal_ms": 1000 * statistics.median(normal),
            "loss_ms": 1000 * statistics.median(after_loss),
            "backfill_s": backfill_s,
            "memory_mb": memory,
        }
    finally:
        nats_server.stop(signal.SIGKILL)
        redis_server.stop(signal.SIGKILL)


async def time_to_republish(directory: Path, active: int, samples: int) -> dict[str, list[float]]:
    """Seconds from the loss until every active task is in the stream again, with a reconciler
    passing every 2 s (the default nats.reconcile_interval_s) in the background."""
    redis_server = RedisServer(directory / "redis-t")
    nats_server = NatsServer(directory / "nats-t")
    redis_server.start()
    nats_server.start()
    found: dict[str, list[float]] = {"stream deleted": [], "NATS restarted on empty storage": []}
    try:
        store = RedisTaskStore(redis_server.url)
        queue = NatsTaskQueue(nats_server.url, store, worker_id="bench")
        await queue.connect()
        reconciler = Reconciler(store, queue, interval=2.0)
        reconciler.start()
        await asyncio.sleep(0.5)  # the first pass records the stream
        await queue.publish(await store.create_many([make_task() for _ in range(active)]))
        for kind in found:
            for _ in range(samples):
                await asyncio.sleep(2.0 * (0.25 + len(found[kind]) / samples))  # vary the phase
                if kind == "stream deleted":
                    nc = await nats.connect(nats_server.url)
                    await nc.jetstream().delete_stream(STREAM)
                    began = time.perf_counter()
                else:
                    nats_server.stop(signal.SIGKILL)
                    shutil.rmtree(nats_server.dir / "jetstream")
                    began = time.perf_counter()
                    await asyncio.to_thread(nats_server.start)
                    nc = await nats.connect(nats_server.url)
                js = nc.jetstream()
                while True:
                    try:
                        if (await js.stream_info(STREAM)).state.messages >= active:
                            break
                    except nats.js.errors.NotFoundError:
                        pass
                    await asyncio.sleep(0.02)
                found[kind].append(time.perf_counter() - began)
                await nc.close()
        await reconciler.stop()
        await queue.close()
        await store.close()
    finally:
        nats_server.stop(signal.SIGKILL)
        redis_server.stop(signal.SIGKILL)
    return found


async def main(sizes: list[int], active: int, passes: int, losses: int, samples: int) -> None:
    configure("ERROR")  # the table only: a loss logs warnings by design
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            print(f"filling {n:,} ended tasks ...", file=sys.stderr)
            rows.append(await measure(Path(tmp) / str(n), n, active, passes, losses))
        print(f"timing loss to re-publish of {active} tasks ...", file=sys.stderr)
        delays = await time_to_republish(Path(tmp) / "delay", active, samples)

    print(f"| ended tasks | active | fill | Redis memory | normal pass (median of {passes}) "
          f"| pass after a loss (median of {losses}) | one-time backfill |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['ended']:,} | {r['active']:,} | {r['fill_s']:.1f} s | {r['memory_mb']:.0f} MB "
            f"| {r['normal_ms']:.2f} ms | {r['loss_ms']:.1f} ms | {r['backfill_s']:.2f} s |"
        )
    small, large = rows[0], rows[-1]
    print()
    print(
        f"ratio {large['ended']:,} / {small['ended']:,}: normal pass "
        f"{large['normal_ms'] / small['normal_ms']:.2f}x, pass after a loss "
        f"{large['loss_ms'] / small['loss_ms']:.2f}x, backfill "
        f"{large['backfill_s'] / small['backfill_s']:.1f}x"
    )
    print()
    print(f"loss → all {active} active tasks in the stream again (reconciler every 2 s):")
    for kind, values in delays.items():
        print(
            f"- {kind}: median {statistics.median(values):.2f} s, max {max(values):.2f} s "
            f"({len(values)} samples)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--active", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=21)
    parser.add_argument("--losses", type=int, default=5)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.active, args.passes, args.losses, args.samples))
