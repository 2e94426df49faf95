"""The chaos soak's client side: a steady, seeded stream of mixed circuits, submitted like a
careful client does while the service is being broken underneath it.

Every submission carries an Idempotency-Key, so a retry after a lost answer (API killed after
storing) gets the task the first attempt created rather than a second one. Connection errors,
5xx and 429 are retried with a capped backoff until the submission's deadline; a submission
that never got a 202 is counted as refused, by the last reason seen, never silently dropped.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qtask_testkit import BELL, ghz, slow_circuit

POISON_MARKER = "// chaos-poison-pill"
# One task in this many is poison (its worker process SIGKILLs itself on it).
POISON_EVERY = 150
# A submission gives up after this long (an API restart takes ~3 s, a Redis one a few more).
SUBMIT_DEADLINE_S = 60.0
BACKOFF_S = (0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class Submission:
    """One accepted task: what it is and when its first submit attempt was made."""

    index: int
    kind: str  # small | large | poison
    qubits: int
    shots: int
    first_try: float  # wall clock (time.time()), comparable with the store's timestamps
    accepted_at: float


@dataclass(slots=True)
class LoadStats:
    """What the load generator saw; filled by its threads under `lock`."""

    accepted: dict[str, Submission] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)  # retried attempts, by reason
    duplicates: int = 0  # a retry answered with an id the generator already had for that key
    lock: threading.Lock = field(default_factory=threading.Lock)


def circuit(rng: random.Random, index: int) -> tuple[str, str, int, int]:
    """(kind, source, qubits, shots) of submission `index`: 90 % small, 10 % 16-20 qubits."""
    if index % POISON_EVERY == POISON_EVERY // 2:
        return "poison", f"{POISON_MARKER}\n{BELL}", 2, 1024
    if rng.random() < 0.9:
        if rng.random() < 0.5:
            return "small", BELL, 2, 1024
        n = rng.randint(3, 12)
        return "small", ghz(n), n, rng.choice((100, 1024))
    n = rng.randint(16, 20)
    # ~0.05 s (16 qubits) to ~0.5 s (20 qubits) alone on one core.
    return "large", slow_circuit(n, rng.randint(3, 6)), n, 200


class Load:
    """Submits `rate` tasks a second from a pool of client threads until stopped."""

    def __init__(self, url: str, seed: int, rate: float, threads: int = 16) -> None:
        self.url = url
        self.seed = seed
        self.rate = rate
        self.stats = LoadStats()
        self._rng = random.Random(f"load-{seed}")
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="chaos-client")
        self._local = threading.local()
        self._pacer = threading.Thread(target=self._pace, name="chaos-pacer", daemon=True)
        self.submitted = 0

    def start(self) -> None:
        """Start submitting."""
        self._pacer.start()

    def stop(self) -> None:
        """Stop submitting; wait for submissions in flight (each bounded by its deadline)."""
        self._stop.set()
        self._pacer.join()
        self._pool.shutdown(wait=True)

    def _pace(self) -> None:
        started = time.monotonic()
        index = 0
        while not self._stop.is_set():
            due = started + index / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                break
            kind, source, qubits, shots = circuit(self._rng, index)
            self._pool.submit(self._submit, index, kind, source, qubits, shots)
            index += 1
            self.submitted = index

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(base_url=self.url, timeout=10)
            self._local.client = client
        return client

    def _submit(self, index: int, kind: str, source: str, qubits: int, shots: int) -> None:
        key = f"chaos-{self.seed}-{index}"
        first = time.time()
        deadline = time.monotonic() + SUBMIT_DEADLINE_S
        reason = "deadline"
        tries = 0
        while time.monotonic() < deadline:
            try:
                response = self._client().post(
                    "/tasks",
                    json={"qc": source, "shots": shots},
                    headers={"Idempotency-Key": key},
                )
            except httpx.TransportError as exc:
                reason = type(exc).__name__
            else:
                if response.status_code == 202:
                    task_id = str(response.json()["task_id"])
                    sub = Submission(index, kind, qubits, shots, first, time.time())
                    with self.stats.lock:
                        if task_id in self.stats.accepted:
                            self.stats.duplicates += 1
                        self.stats.accepted[task_id] = sub
                    return
                reason = f"http {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the request itself is wrong: retrying cannot help
            with self.stats.lock:
                self.stats.retries[reason] += 1
            time.sleep(BACKOFF_S[min(tries, len(BACKOFF_S) - 1)])
            tries += 1
        with self.stats.lock:
            self.stats.refused[reason] += 1
