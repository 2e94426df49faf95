"""The poller: asks remote providers about submitted jobs and ends their tasks.

Each pass claims the jobs due for a status call (RemoteJobStore.claim_due: atomic, leased, so
any number of pollers share the work and a dead poller's claim lapses), asks each provider in
batches of its status_batch with bounded concurrency, and then per job:
- ended at the provider: the bucket's "move" (domain.object_keys): write the result object under
  the completed area (when an object store is configured), then complete the task (the
  store's first-result-wins rule refuses a second completion), then delete the pending
  objects (job record and circuit), then forget the job. A poller killed in between leaves the
  job claimed; it comes due again, and finds the task ended (nothing fetched twice) or not
  (fetched again, nothing lost);
- error or cancelled at the provider: the task ends in error with the provider's message;
- unfinished past the backend's remote_timeout_s (reachable or not): cancel at the provider
  (best effort) and end the task in error saying so;
- unfinished: poll again after the backend's interval, doubled per poll, with jitter.
A task that ended here meanwhile (DELETE /tasks/{id}) is cancelled at the provider (best
effort, logged) and forgotten. The cancel makes its job due now (RemoteJobStore.due_now), so
this happens at the next pass, within a tick, not at the job's next scheduled poll; a pass whose
status call was out at that moment reschedules only jobs still claimed by it, so it cannot push
the cancel back.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from qtask.constants import (
    REMOTE_POLL_CLAIM_LIMIT,
    REMOTE_POLL_CONCURRENCY,
    REMOTE_POLL_LEASE_SECONDS,
    REMOTE_POLL_TICK_SECONDS,
)
from qtask.domain.object_keys import pending_keys
from qtask.domain.ports import ObjectStore, TaskStore
from qtask.domain.remote import (
    RemoteBackend,
    RemoteJob,
    RemoteJobStore,
    RemoteState,
    RemoteStatus,
    next_poll_delay,
    remote_job_key,
)
from qtask.domain.task import Status, result_document
from qtask.errors import QTaskError, TaskNotFoundError
from qtask.logs import get_logger
from qtask.runtime.periodic import Periodic

log = get_logger("poller")

POLLER_ID = "poller"


@dataclass
class PassReport:
    """What one pass did (benchmarks and tests read it)."""

    claimed: int = 0
    status_calls: int = 0
    completed: int = 0
    failed: int = 0
    rescheduled: int = 0


class RemotePoller(Periodic):
    """Polls remote jobs in passes; `loop` runs them in the background."""

    name = "remote_poller"

    def __init__(
        self,
        store: TaskStore,
        jobs: RemoteJobStore,
        backends: Mapping[str, RemoteBackend],
        objects: ObjectStore | None = None,
        *,
        tick_s: float = REMOTE_POLL_TICK_SECONDS,
        claim_limit: int = REMOTE_POLL_CLAIM_LIMIT,
        concurrency: int = REMOTE_POLL_CONCURRENCY,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._backends = dict(backends)
        self._objects = objects
        self._claim_limit = claim_limit
        self._limit = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._rng = rng or random.Random()
        # A pass stopped midway leaves its claimed jobs to come due again after their lease.
        super().__init__(tick_s)

    async def run_once(self) -> PassReport:
        """One pass over the jobs due now."""
        now = self._clock()
        report = PassReport()
        due = await self._jobs.claim_due(now, self._claim_limit, REMOTE_POLL_LEASE_SECONDS)
        report.claimed = len(due)
        if not due:
            return report
        chunks: list[tuple[str, list[RemoteJob]]] = []
        by_backend: dict[str, list[RemoteJob]] = {}
        for job in due:
            by_backend.setdefault(job.backend, []).append(job)
        for name, jobs in by_backend.items():
            backend = self._backends.get(name)
            size = 1 if backend is None else max(1, backend.status_batch)
            chunks.extend((name, jobs[i : i + size]) for i in range(0, len(jobs), size))
        await asyncio.gather(*(self._chunk(name, jobs, now, report) for name, jobs in chunks))
        if report.completed or report.failed:
            log.info(
                "remote_poll_pass",
                claimed=report.claimed,
                status_calls=report.status_calls,
                completed=report.completed,
                failed=report.failed,
            )
        return report

    async def _chunk(
        self, name: str, jobs: list[RemoteJob], now: float, report: PassReport
    ) -> None:
        backend = self._backends.get(name)
        if backend is None:  # the configuration no longer has it
            for job in jobs:
                await self._end(job, f"The remote backend {name!r} is no longer configured.")
                report.failed += 1
            return
        outcomes = await self._store.outcomes([job.task_id for job in jobs])
        active = []
        for job in jobs:
            outcome = outcomes.get(job.task_id)
            if outcome is None or outcome.status.terminal:
                await self._settled_here(backend, job, None if outcome is None else outcome.status)
            else:
                active.append(job)
        if not active:
            return
        unreachable: str | None = None
        answers: dict[str, RemoteStatus] = {}
        async with self._limit:
            report.status_calls += 1
            try:
                answers = await backend.statuses([job.job_id for job in active])
            except QTaskError as exc:
                unreachable = str(exc)
                log.warning("remote_status_failed", backend=name, jobs=len(active), reason=str(exc))
        later = []
        for job in active:
            status = answers.get(job.job_id)
            if status is not None and status.state.ended:
                if await self._finish(job, status):
                    report.completed += 1
                else:
                    report.failed += 1
            elif now - job.submitted_at > backend.remote_timeout_s:
                await self._cancel(backend, job)
                why = f"; the last status call failed: {unreachable}" if unreachable else ""
                await self._end(
                    job,
                    f"The remote backend {name} did not finish the task within its "
                    f"remote_timeout_s of {backend.remote_timeout_s:g} s{why}.",
                )
                report.failed += 1
            else:
                delay = next_poll_delay(backend.poll_interval_s, job.polls, self._rng)
                later.append(replace(job, next_poll_at=now + delay, polls=job.polls + 1))
        if later:
            # Only while still claimed by this pass: a task cancelled while its status call
            # was out made its job due now (RemoteJobStore.due_now), which must stand.
            await self._jobs.reschedule(later, claimed_until=now + REMOTE_POLL_LEASE_SECONDS)
            report.rescheduled += len(later)

    async def _finish(self, job: RemoteJob, status: RemoteStatus) -> bool:
        """End the task as the provider's job ended; True when it completed."""
        if status.state is RemoteState.DONE and status.counts is not None:
            task = await self._store.get(job.task_id)
            if task is None:
                await self._forget(job)
                return False
            memory = status.memory if task.memory else None
            if self._objects is not None and task.result_object is not None:
                # Written before the record says completed, so it exists once that is read.
                await self._objects.put(
                    task.result_object,
                    result_document(
                        task,
                        status.counts,
                        memory=None if memory is None else list(memory),
                        remote_job=job.job_id,
                    ),
                )
                memory = None
            try:
                await self._store.complete(
                    job.task_id, status.counts, worker_id=POLLER_ID, memory=memory
                )
            except TaskNotFoundError:
                pass
            log.info(
                "task_finished",
                task_id=job.task_id,
                outcome="completed",
                backend=job.backend,
                job_id=job.job_id,
            )
            await self._forget(job, completed=True)
            return True
        if status.state is RemoteState.CANCELLED:
            message = f"The task was cancelled at the remote backend {job.backend}."
        else:
            message = status.message or f"The remote backend {job.backend} reported an error."
        await self._end(job, message)
        return False

    async def _end(self, job: RemoteJob, message: str) -> None:
        try:
            await self._store.fail(job.task_id, message)
        except TaskNotFoundError:
            pass
        log.info("task_failed", task_id=job.task_id, backend=job.backend, reason=message)
        await self._forget(job)

    async def _settled_here(
        self, backend: RemoteBackend, job: RemoteJob, status: Status | None
    ) -> None:
        """The task ended here (cancelled, or completed by a pass that died before forgetting
        the job: its move is finished now) or is gone: cancel an unfinished job at the
        provider, then forget it."""
        if status is Status.FAILED:
            await self._cancel(backend, job)
        await self._forget(job, completed=status is Status.COMPLETED)

    async def _cancel(self, backend: RemoteBackend, job: RemoteJob) -> None:
        try:
            async with self._limit:
                await backend.cancel(job.job_id)
            log.info("remote_cancelled", task_id=job.task_id, job_id=job.job_id)
        except QTaskError as exc:  # best effort: the provider's job ends on its own
            log.warning("remote_cancel_failed", task_id=job.task_id, reason=str(exc))

    async def _forget(self, job: RemoteJob, *, completed: bool = False) -> None:
        """Delete the pending objects (domain.object_keys), then the job itself: the job record,
        and for a completed task its circuit too (its result document holds it now). Last, so
        a pass that dies before leaves the job to come due again and be cleaned up."""
        if self._objects is not None:
            keys = pending_keys(job.task_id) if completed else (remote_job_key(job.task_id),)
            for key in keys:
                await self._objects.delete(key)
        await self._jobs.forget([job.task_id])
