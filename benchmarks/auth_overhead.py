"""What API keys and rate limits cost per request.

    .venv/bin/python benchmarks/auth_overhead.py [--calls 5000]

Times `Gate.caller` (the check every /tasks request passes) with keys off, keys on, keys on
with the in-process rate buckets (embedded mode), and keys on with the Redis buckets shared by
every API process (distributed mode; a real redis-server on a free port). Prints the median,
p99 and mean per call. Never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask.adapters.local_rate import TokenBuckets
from qtask.adapters.redis_rate import RedisRateLimiter
from qtask.adapters.redis_store import RedisTaskStore
from qtask.api.auth import Gate, key_digest, new_key
from qtask.config import ApiKey, AuthSettings
from servers import RedisServer

KEY = new_key()
# 100 configured keys: the lookup is one dict probe however many there are.
OTHERS = [ApiKey(name=f"k{i}", sha256=key_digest(new_key())) for i in range(99)]
KEYS = (ApiKey(name="me", sha256=key_digest(KEY)), *OTHERS)
HEADERS = {"authorization": f"Bearer {KEY}"}
LIMIT = {"rate_per_s": 1e9, "burst": 1_000_000_000}  # never refuses: measures the check only


async def _time(gate: Gate, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await gate.caller(HEADERS)
        samples.append(time.perf_counter() - started)
    return samples


async def main(calls: int) -> None:
    rows: list[tuple[str, list[float]]] = []
    rows.append(("keys off", await _time(Gate(AuthSettings()), calls)))
    rows.append(("keys on", await _time(Gate(AuthSettings(enabled=True, keys=KEYS)), calls)))
    limited = AuthSettings(enabled=True, keys=KEYS, **LIMIT)  # type: ignore[arg-type]
    local = Gate(limited, TokenBuckets(limited.rate_per_s, limited.burst))
    rows.append(("keys + rate, in process", await _time(local, calls)))
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        store = RedisTaskStore(server.url)
        try:
            settings = AuthSettings(enabled=True, keys=KEYS, **LIMIT)  # type: ignore[arg-type]
            shared = Gate(settings, RedisRateLimiter(store, settings.rate_per_s, settings.burst))
            await _time(shared, 100)  # connect and load the script
            rows.append(("keys + rate, in Redis", await _time(shared, calls)))
        finally:
            await store.close()
            server.stop()
    print(f"{'check':<26}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
    for name, samples in rows:
        ordered = sorted(samples)
        p50 = 1e6 * statistics.median(ordered)
        p99 = 1e6 * ordered[int(0.99 * (len(ordered) - 1))]
        print(f"{name:<26}{p50:>10.1f}{p99:>10.1f}{1e6 * statistics.fmean(ordered):>10.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    asyncio.run(main(parser.parse_args().calls))
