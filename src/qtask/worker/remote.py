"""Submission of tasks that run on remote backends (domain.remote): the worker's side of the
remote lifecycle.

The worker submits the task (its id is the provider's idempotency key), writes the pending job
record to the object store when there is one, and stores the RemoteJob durably; only then does
it acknowledge the delivery. A worker killed anywhere before that store leaves the delivery
unacknowledged: the redelivery submits again with the same key and gets the same job back.
No simulator slot or child process is held while the provider works: the poller ends the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping

import orjson

from qtask.constants import FAULT_EXIT_AFTER_REMOTE_SUBMIT_ENV
from qtask.domain.ports import ObjectStore
from qtask.domain.remote import (
    RemoteBackend,
    RemoteJob,
    RemoteJobStore,
    job_document,
    remote_job_key,
)
from qtask.domain.task import Task
from qtask.errors import ExecutionError, RemoteUnavailableError, ShuttingDownError
from qtask.logs import get_logger

log = get_logger("worker")

# Longest wait between two submission attempts to a provider that cannot be reached.
_MAX_SUBMIT_BACKOFF_S = 60.0


class RemoteSubmitter:
    """Submits tasks to their remote backends and records the jobs."""

    def __init__(
        self,
        backends: Mapping[str, RemoteBackend],
        jobs: RemoteJobStore,
        objects: ObjectStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backends = dict(backends)
        self._jobs = jobs
        self._objects = objects
        self._clock = clock

    def handles(self, task: Task) -> bool:
        """Whether the task's backend is a remote one."""
        return task.backend in self._backends

    async def submit(self, task: Task, stopping: asyncio.Event | None = None) -> RemoteJob:
        """Submit and durably record the job.

        A provider that cannot be reached is tried again (the delivery stays held, so its
        lease is renewed), backing off from the backend's poll interval, until it answers or
        remote_timeout_s passed (ExecutionError saying so: the task ends in error) or
        `stopping` is set (ShuttingDownError: the task goes back to the queue). A refusal for
        good raises RemoteRejectedError; a store error propagates (the redelivery submits again
        with the same idempotency key).
        """
        backend = self._backends[task.backend]
        deadline = time.monotonic() + backend.remote_timeout_s
        delay = backend.poll_interval_s
        while True:
            try:
                job_id = await backend.submit(task)
                break
            except RemoteUnavailableError as exc:
                if time.monotonic() + delay > deadline:
                    raise ExecutionError(
                        f"The remote backend {task.backend} could not be reached within its "
                        f"remote_timeout_s of {backend.remote_timeout_s:g} s: {exc}"
                    ) from exc
                log.warning("remote_submit_retry", task_id=task.id, delay_s=delay, reason=str(exc))
                if stopping is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await stopping.wait()
                    if stopping.is_set():
                        raise ShuttingDownError(
                            "stopped before the task could be submitted"
                        ) from exc
                delay = min(delay * 2, _MAX_SUBMIT_BACKOFF_S)
        if os.environ.get(FAULT_EXIT_AFTER_REMOTE_SUBMIT_ENV):  # chaos tests: die in the gap
            os.kill(os.getpid(), signal.SIGKILL)
        now = self._clock()
        job = RemoteJob(
            task_id=task.id,
            backend=task.backend,
            job_id=job_id,
            submitted_at=now,
            next_poll_at=now + backend.poll_interval_s,
        )
        if self._objects is not None:
            await self._objects.put(remote_job_key(task.id), orjson.dumps(job_document(job)))
        await self._jobs.record(job)
        return job

    async def due_now(self, task_id: str) -> None:
        """Make the task's job due at the poller's next pass (its task ended meanwhile)."""
        await self._jobs.due_now([task_id], self._clock())
