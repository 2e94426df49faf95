"""`DELETE /tasks/{id}` of a remote task reaches the provider at the next poller pass, not at
the job's next scheduled poll: two real qtask deployments, A federating to B (`qtask serve`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qtask_testkit import BELL, ServerProcess, slow_circuit, submit, wait_done
from servers import Front, federated_pair

# A's first status call of a job comes this long (x0.75 to x1.25) after the submission: far
# past the deadline below, so only the cancel's own path can reach B in time.
POLL_INTERVAL_S = "120"
# How long B may take to show the cancel, counted from A's answer to the DELETE.
CANCEL_DEADLINE_S = 10.0


@pytest.fixture(params=["embedded", "distributed"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Front, ServerProcess]]:
    yield from federated_pair(
        request.param, tmp_path, tmp_path_factory, poll_interval_s=POLL_INTERVAL_S
    )


def test_a_cancel_reaches_the_remote_qtask_within_seconds(
    pair: tuple[Front, ServerProcess],
) -> None:
    front, remote = pair
    with (
        httpx.Client(base_url=front.url, timeout=30) as a,
        httpx.Client(base_url=remote.url, timeout=30) as b,
    ):
        # B's one worker process is busy, so A's task waits in B's queue (it cannot end there
        # on its own before the cancel arrives).
        blocker = submit(b, slow_circuit(), shots=10)
        task_id = submit(a, BELL, shots=100, backend="remote")
        deadline = time.monotonic() + 60
        while len(listed := b.get("/tasks").json()["tasks"]) < 2:
            assert time.monotonic() < deadline, "never submitted to B"
            time.sleep(0.05)
        on_b = next(t["task_id"] for t in listed if t["task_id"] != blocker)
        assert b.get(f"/tasks/{on_b}").json()["status"] == "pending"

        cancelled = a.delete(f"/tasks/{task_id}")
        asked_at = time.monotonic()
        assert cancelled.json() == {"status": "error", "message": "Task was cancelled."}
        body = wait_done(b, on_b, timeout=CANCEL_DEADLINE_S)
        took = time.monotonic() - asked_at
        print(f"cancel reached B {took:.2f} s after A answered the DELETE")
        assert body == {"status": "error", "message": "Task was cancelled."}
        b.delete(f"/tasks/{blocker}")
