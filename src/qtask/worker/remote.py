"""Submission of tasks that run on remote backends (domain.remote): the worker's side of the
remote lifecycle.

The worker submits the task (its id is the provider's idempotency key), writes the pending job
record to the object store when there is one, and stores the RemoteJob durably; only then does
it acknowledge the delivery. A worker killed anywhere before that store leaves the delivery
unacknowledged: the redelivery submits again with the same key and gets the same job back.
No simulator slot or child process is held while the provider works: the poller ends the task.
"""

from __future__ import annotations

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

    async def submit(self, task: Task) -> RemoteJob:
        """Submit and durably record; RemoteRejectedError when the provider refuses the task
        for good, RemoteUnavailableError (or a store error) when it should be tried again."""
        backend = self._backends[task.backend]
        job_id = await backend.submit(task)
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
