"""Live task streams (the GET /tasks/{id}/events websocket): what N open streams cost one API
process, and how soon each hears that its task ended.

    .venv/bin/python benchmarks/live_streams.py [--streams 500]

Distributed: Redis + NATS + S3 with `qtask api` and no worker, so the Bell tasks stay queued;
N websockets connect (one per task) and each gets its first message (`queued`); then a
`qtask worker` starts and runs them. Latency is from the task's `finished_at` (stored by the
worker) to the client holding the stream's final message: the Redis notice, the API's re-read
and the websocket frame included; the 1 s periodic re-read is not what delivers it (an end
arriving by re-read would show as up to 1,000 ms). "CPU while idle": the API process's CPU
time per second over 5 s while every stream waits (the periodic re-reads). Memory is the API
process's resident set before the streams connect and once all of them have their first
message. Client and server share the machine's cores. Prints a markdown table; asserts
nothing on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from websockets.asyncio.client import connect

from longpoll import quantile, rss_mib, submit_all

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import DistributedDeployment

IDLE_S = 5.0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, pid: int, ids: list[str], release: object) -> dict[str, object]:
    """Open one stream per id, measure, call `release()` (which makes the tasks end), and
    collect each final message's arrival time."""
    ws = url.replace("http://", "ws://", 1)
    ended: dict[str, float] = {}
    first = asyncio.Semaphore(0)

    async def follow(task_id: str) -> None:
        async with connect(f"{ws}/tasks/{task_id}/events", max_queue=4) as socket:
            states = []
            async for text in socket:
                states.append(json.loads(text)["state"])
                if len(states) == 1:
                    first.release()
            ended[task_id] = time.time()
            assert states[-1] == "completed", states

    rss_before = rss_mib(pid)
    started = time.monotonic()
    tasks = [asyncio.create_task(follow(task_id)) for task_id in ids]
    for _ in ids:
        await asyncio.wait_for(first.acquire(), 120)
    connect_s = time.monotonic() - started
    rss_streaming = rss_mib(pid)
    # The idle cost: each stream's periodic re-read (queued tasks change nothing meanwhile).
    cpu_before, idle_started = cpu_s(pid), time.monotonic()
    await asyncio.sleep(IDLE_S)
    idle_cpu = (cpu_s(pid) - cpu_before) / (time.monotonic() - idle_started)
    assert not ended, "a stream ended before its task"
    await asyncio.to_thread(release)  # type: ignore[arg-type]
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    return {
        "ended": ended,
        "rss_before": rss_before,
        "rss_streaming": rss_streaming,
        "connect_s": connect_s,
        "idle_cpu": idle_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with TemporaryDirectory() as tmp:
        deployment = DistributedDeployment(Path(tmp), workers=0)
        deployment.start()
        try:
            assert deployment.api is not None
            assert deployment.api.process is not None
            ids = submit_all(deployment.url, args.streams)
            result = asyncio.run(
                measure(deployment.url, deployment.api.process.pid, ids, deployment.add_worker)
            )
            import redis

            client = redis.Redis.from_url(deployment.redis.url)
            with client.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hget(f"qtask:task:{task_id}", "finished_at")
                finished = [float(value) for value in pipe.execute()]
            client.close()
        finally:
            deployment.terminate()
    ended: dict[str, float] = result["ended"]  # type: ignore[assignment]
    latency = [(ended[i] - f) * 1000 for i, f in zip(ids, finished, strict=True)]
    rss_before: float = result["rss_before"]  # type: ignore[assignment]
    rss_streaming: float = result["rss_streaming"]  # type: ignore[assignment]
    connect_s: float = result["connect_s"]  # type: ignore[assignment]
    idle_cpu: float = result["idle_cpu"]  # type: ignore[assignment]
    print(
        "| streams | connect + first message (s) | API RSS before (MiB) | with streams (MiB) "
        "| Δ (MiB) | API CPU while idle (cores) | end → final message p50 / p99 / max (ms) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.streams} | {connect_s:.1f} | {rss_before:.0f} | {rss_streaming:.0f} "
        f"| {rss_streaming - rss_before:+.1f} | {idle_cpu:.2f} "
        f"| {statistics.median(latency):.1f} / {quantile(latency, 0.99):.1f} "
        f"/ {max(latency):.1f} |"
    )


if __name__ == "__main__":
    main()
