"""Distributed mode's task queue on NATS JetStream.

A message is a task id. The stream keeps messages on disk with work-queue retention, so an
acknowledged message is deleted and a nats-server restart loses nothing that was acknowledged to
a publisher. Every worker pulls from one shared durable consumer, so N workers split the load and
a message is held by one worker at a time: it comes back to the queue when that worker naks it or
does not acknowledge it within `ack_wait` (at least once). Each delivery starts its task in the
store, which counts the attempt as domain.lifecycle says; JetStream's own delivery count is only
logged (it cannot know that a shutdown refunded an attempt). `max_deliver` bounds how often a
message is handed out.

Publishing is idempotent: the task id is also the message id, so JetStream drops a second
publish of the same task within `duplicate_window`. A task is marked published in the store only
once JetStream confirmed it stored the message; until then the reconciler re-publishes it.

The stream can be lost apart from the store (deleted, or a server that came back without its
storage). `stream_state()` tells streams apart by their creation time, so the reconciler can
notice that a stream is not the one it recorded; and wherever the queue itself finds the stream
or the consumer gone, it tells the callbacks given to `on_stream_lost()`. What to do about a loss
is the reconciler's business, not this adapter's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Callable, Sequence

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from qtask.constants import LEASE_SECONDS
from qtask.domain.ports import Delivery, StreamState, TaskStore
from qtask.domain.task import Task
from qtask.errors import ConfigError, QueueUnavailableError
from qtask.logs import get_logger

__all__ = ["NatsDelivery", "NatsTaskQueue", "QueueUnavailableError"]

log = get_logger("nats")

# What nats-py raises when the server is gone, slow or refuses: its own Error tree (timeouts,
# closed or reconnecting connection, full reconnect buffer, JetStream API errors) and the OS's.
_NATS_FAILURES = (nats.errors.Error, OSError, TimeoutError)

# Publishes are sent concurrently in chunks of this many, each awaiting its acknowledgement.
_PUBLISH_CHUNK = 1000
# nats-py refuses a fetch timeout of zero; a "do not wait" fetch waits this long instead.
_MIN_FETCH_SECONDS = 0.05
# The second pull of a fetch (the rest of a batch that the first message said was waiting) waits
# at most this long: another worker may take some of those messages first, and nats-py then
# waits for the batch to fill until the pull's deadline.
_REST_FETCH_SECONDS = 0.02
# How long to wait before making again a stream this queue saw and then found missing.
# nats-server 2.9.10 finishes deleting a stream's files in the background: a stream of the same
# name created within milliseconds may pick up the old one's index without its message blocks
# (last_seq 200, no messages) and refuse every publish with "error opening msg block file"
# until it is deleted (measured: 4 of 33 streams made at once after a delete that followed 200
# publishes; none of 56 after a wait of 0.1 to 1 s). The margin costs one second per loss.
STREAM_RECREATE_DELAY_S = 1.0


def _more_waiting(msg: Msg, room: int) -> int:
    """How many more messages to pull at once after `msg`, at most `room`: as many as the
    consumer held undelivered when JetStream sent it (its reply subject says), or `room` when
    `msg` is a redelivery (redeliveries are not counted there); 0 when that cannot be read."""
    try:
        metadata = msg.metadata
        if (metadata.num_delivered or 0) > 1:
            return max(room, 0)
        return max(min(room, int(metadata.num_pending or 0)), 0)
    except (ValueError, TypeError, AttributeError, nats.errors.Error):
        return 0


def default_worker_id() -> str:
    """hostname-pid: tells the workers of a cluster apart in the store and the logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


class NatsTaskQueue:
    """TaskQueue on a JetStream work-queue stream and one shared durable pull consumer."""

    def __init__(
        self,
        url: str,
        store: TaskStore,
        *,
        stream: str = "QTASK",
        subject: str = "qtask.tasks",
        durable: str = "workers",
        ack_wait: float = LEASE_SECONDS,
        max_deliver: int = 4,
        duplicate_window: float = 120.0,
        max_ack_pending: int = 10_000,
        worker_id: str | None = None,
        timeout: float = 2.0,
        consumer_check_s: float = 5.0,
    ) -> None:
        """Configure the queue; `connect()` opens the connection.

        `max_deliver` bounds JetStream's deliveries of one message; processes run it unbounded
        (-1): refunded attempts let deliveries outnumber attempts, and the bound that ends a
        task is the lifecycle's (the delivery past max_attempts files a dead letter). `timeout`
        bounds connecting, each publish acknowledgement, ack_sync and ping. A fetch that finds
        nothing checks, at most every `consumer_check_s`, that the consumer still exists: a
        pull from a deleted consumer just times out.
        """
        if max_deliver < 1 and max_deliver != -1:
            raise ConfigError(f"max_deliver must be positive or -1, not {max_deliver}")
        if ack_wait <= 0:
            raise ConfigError(f"ack_wait must be positive, not {ack_wait}")
        self.url = url
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.duplicate_window = duplicate_window
        self.max_ack_pending = max_ack_pending
        self.worker_id = worker_id or default_worker_id()
        self.timeout = timeout
        self.consumer_check_s = consumer_check_s
        self._store = store
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        # Set after a reconnect or an API error: check the stream and consumer still exist (a
        # server that lost its storage comes back empty) before the next publish or fetch.
        self._needs_setup = True
        self._setup_lock = asyncio.Lock()
        self._fetch_lock = asyncio.Lock()
        self._closed = False
        self._consumer_checked = 0.0
        self._last_error: str | None = None
        self._loss_callbacks: list[Callable[[], None]] = []
        self._had_stream = False  # the stream existed once: a missing one was deleted

    # --- lifecycle -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, then create or update the stream and the consumer.

        Raises QueueUnavailableError naming the url when no connection is made within `timeout`
        (then connect() may be called again), ConfigError when the stream exists with settings
        qtask cannot use. Once connected, the client reconnects forever, so a nats-server
        restart is ridden out.
        """
        if self._closed:
            raise QueueUnavailableError("the NATS task queue is closed")
        if self._nc is not None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                nc = await self._open_connection()
        except _NATS_FAILURES as exc:
            raise QueueUnavailableError(
                f"cannot connect to NATS at {self.url} within {self.timeout:g} s: {_describe(exc)}"
            ) from exc
        self._nc, self._js = nc, nc.jetstream(timeout=self.timeout)
        try:
            await self._setup()
        except BaseException:
            self._nc = self._js = None
            with contextlib.suppress(*_NATS_FAILURES):
                async with asyncio.timeout(self.timeout):
                    await nc.close()
            raise

    async def _open_connection(self) -> Client:
        # With max_reconnect_attempts=-1 nats-py retries even the first connection forever;
        # connect() bounds that with wait_for, so a server starting up is waited for briefly.
        return await nats.connect(
            self.url,
            name=f"qtask-{self.worker_id}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=self.timeout,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )

    async def close(self) -> None:
        """Stop fetching, hand buffered messages back to the queue and close the connection."""
        if self._closed:
            return
        self._closed = True
        nc = self._nc
        if nc is None:
            return
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(*_NATS_FAILURES):
                await sub.unsubscribe()
            await self._nak_buffered(sub)
        with contextlib.suppress(*_NATS_FAILURES):
            async with asyncio.timeout(self.timeout):
                await nc.close()

    async def _nak_buffered(self, sub: JetStreamContext.PullSubscription) -> None:
        # A fetch that was cancelled or timed out client-side may leave a pull request on the
        # server, whose messages land in the subscription's buffer after the fetch gave up. Nak
        # them so another worker gets them now rather than after ack_wait. nats-py has no public
        # way to read that buffer, hence the private attribute.
        buffered: asyncio.Queue[Msg] = sub._sub._pending_queue
        while not buffered.empty():
            msg = buffered.get_nowait()
            if JetStreamContext.is_status_msg(msg) or not msg.reply:
                continue
            with contextlib.suppress(*_NATS_FAILURES):
                await msg.nak()

    async def ping(self) -> None:
        """Raise QueueUnavailableError unless NATS is connected and JetStream answers."""
        nc, js = self._connected()
        if not nc.is_connected:
            raise QueueUnavailableError(f"not connected to NATS at {self.url}")
        try:
            async with asyncio.timeout(self.timeout):
                await js.stream_info(self.stream)
        except _NATS_FAILURES as exc:
            raise QueueUnavailableError(
                f"JetStream at {self.url} does not answer: {_describe(exc)}"
            ) from exc

    async def pending(self) -> int:
        """Messages in the stream not yet handed to any worker (for metrics).

        Messages handed out and not yet acknowledged, including naked ones waiting to be
        redelivered, are not counted here.
        """
        _, js = self._connected()
        try:
            info = await js.consumer_info(self.stream, self.durable, timeout=self.timeout)
        except _NATS_FAILURES as exc:
            raise QueueUnavailableError(f"cannot read the consumer: {_describe(exc)}") from exc
        return info.num_pending or 0

    async def stream_state(self) -> StreamState:
        """The stream's identity (its creation time) and last sequence number; a missing stream
        is created first, with its consumer."""
        nc, js = self._connected()
        if not nc.is_connected:  # fail at once, as publish does, rather than after a timeout
            raise QueueUnavailableError(f"NATS at {self.url} is disconnected")
        for _ in range(2):
            await self._ensure_setup()
            try:
                info = await js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                self._stream_gone("stream_info")  # deleted since the setup: set it up again
                continue
            except _NATS_FAILURES as exc:
                raise QueueUnavailableError(
                    f"cannot read stream {self.stream} on NATS at {self.url}: {_describe(exc)}"
                ) from exc
            if info.created is None:  # every JetStream since 2.2 reports it
                raise QueueUnavailableError(f"NATS stream {self.stream} has no creation time")
            return StreamState(info.created.isoformat(), info.state.last_seq)
        raise QueueUnavailableError(f"NATS stream {self.stream} keeps disappearing")

    def on_stream_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` (synchronously; it must not block) whenever this queue finds its
        stream or consumer gone, or creates the stream."""
        self._loss_callbacks.append(callback)

    def _stream_gone(self, where: str) -> None:
        """The stream or consumer was found missing: set up again before the next use, and
        tell whoever checks for a lost stream."""
        self._needs_setup = True
        log.warning("nats_stream_or_consumer_missing", stream=self.stream, found_by=where)
        for callback in self._loss_callbacks:
            callback()

    # --- TaskQueue ---------------------------------------------------------------------------

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Publish the tasks' ids, wait for JetStream to store each, then mark them published.

        Tasks JetStream confirmed are marked published even when others failed; then
        QueueUnavailableError is raised and the rest stay in the store's unpublished ledger.
        """
        if not tasks:
            return
        nc, js = self._connected()
        if not nc.is_connected:
            # Fail at once rather than wait out a publish timeout per task: the tasks are in
            # the store's unpublished ledger and the reconciler publishes them after reconnect.
            raise QueueUnavailableError(f"NATS at {self.url} is disconnected")
        await self._ensure_setup()
        failures: list[BaseException] = []
        for start in range(0, len(tasks), _PUBLISH_CHUNK):
            chunk = tasks[start : start + _PUBLISH_CHUNK]
            results = await asyncio.gather(
                *(self._publish_one(js, task.id) for task in chunk), return_exceptions=True
            )
            published = []
            for task, result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    failures.append(result)
                else:
                    published.append(task.id)
            if published:
                await self._store.mark_published(published)
        if not failures:
            return
        for failure in failures:
            if not isinstance(failure, _NATS_FAILURES):
                raise failure
        if any(isinstance(failure, nats.js.errors.NoStreamResponseError) for failure in failures):
            self._stream_gone("publish")  # create it again before next time
        raise QueueUnavailableError(
            f"{len(failures)} of {len(tasks)} tasks were not published to NATS at {self.url}: "
            f"{_describe(failures[0])}"
        ) from failures[0]

    async def _publish_one(self, js: JetStreamContext, task_id: str) -> None:
        await js.publish(
            self.subject,
            task_id.encode(),
            timeout=self.timeout,
            headers={"Nats-Msg-Id": task_id},
        )

    async def fetch(self, max_tasks: int, timeout: float) -> list[Delivery]:
        """Pull up to `max_tasks` messages, waiting up to `timeout`, and start their tasks.

        The store counts each start's attempt (domain.lifecycle). A message naming no stored task is
        terminated. When the store fails part-way, the tasks started so far are returned and the
        rest are left unacknowledged, so they come back after ack_wait (as when a worker dies);
        the error is raised only when none was started.
        """
        if max_tasks < 1:
            return []
        async with self._fetch_lock:
            messages = await self._pull(max_tasks, max(timeout, _MIN_FETCH_SECONDS))
        # Started concurrently: one store round trip's latency for the whole fetch.
        started = await asyncio.gather(*map(self._start, messages), return_exceptions=True)
        deliveries: list[Delivery] = []
        failures: list[BaseException] = []
        for result in started:
            if isinstance(result, BaseException):
                failures.append(result)
            elif result is not None:
                deliveries.append(result)
        if failures:
            # Not naked: a nak would hand them straight back to a worker whose store is
            # failing, spending JetStream deliveries (max_deliver) in a tight loop. And
            # nats-server 2.9 mishandles a nak with a delay (it delivered one message twice
            # and lost another in our tests).
            if not deliveries:
                raise failures[0]
            log.warning(
                "nats_start_failed",
                returned=len(deliveries),
                left=len(failures),
                error=_describe(failures[0]),
            )
        return deliveries

    async def _pull(self, max_tasks: int, timeout: float) -> list[Msg]:
        """Wait for one message, then take at once what its metadata says is waiting behind it.

        One `fetch(max_tasks)` would do, but nats-py (2.16) keeps a batch pull open until the
        batch is full or the pull's deadline passes: a message arriving at an idle worker
        waited out the whole fetch timeout (1 s; one Bell task in ~100 at light load, measured
        with two workers). A pull of one returns as its message arrives.
        """
        sub = await self._subscription()
        try:
            messages = await sub.fetch(1, timeout=timeout)
        except TimeoutError:  # nothing arrived in time: nats-py raises its own and asyncio's
            await self._check_consumer()
            return []
        except nats.js.errors.APIError as exc:
            # A status from the server other than "no messages" or "timeout": recreate the
            # stream and consumer if needed and bind a new subscription on the next fetch.
            log.warning("nats_fetch_failed", error=_describe(exc))
            await self._drop_subscription()
            return []
        except _NATS_FAILURES as exc:
            raise QueueUnavailableError(
                f"cannot fetch from NATS at {self.url}: {_describe(exc)}"
            ) from exc
        more = _more_waiting(messages[-1], max_tasks - 1) if messages else 0
        if more > 0:
            try:
                # What fails here is the next fetch's to report: these messages are held now.
                with contextlib.suppress(*_NATS_FAILURES):
                    messages += await sub.fetch(more, timeout=_REST_FETCH_SECONDS)
            except asyncio.CancelledError:
                # Handed back now, not after ack_wait: nobody will start them.
                for msg in messages:
                    with contextlib.suppress(*_NATS_FAILURES):
                        await msg.nak()
                raise
        return messages

    async def _check_consumer(self) -> None:
        """After an empty fetch, now and then: is the consumer still there?

        A pull from a deleted consumer (or from a server that came back without its storage)
        is not refused, it just never delivers; this is how a worker notices and recreates it.
        """
        now = time.monotonic()
        if now - self._consumer_checked < self.consumer_check_s:
            return
        nc, js = self._connected()
        if not nc.is_connected:
            return  # the fetch timed out because NATS is away; it is checked after reconnecting
        self._consumer_checked = now
        try:
            await js.consumer_info(self.stream, self.durable, timeout=self.timeout)
        except nats.js.errors.NotFoundError:
            await self._drop_subscription()
            self._stream_gone("fetch")
        except _NATS_FAILURES as exc:  # unreachable: the next fetch reports it
            log.warning("nats_consumer_check_failed", error=_describe(exc))

    async def _start(self, msg: Msg) -> NatsDelivery | None:
        try:
            task_id = msg.data.decode()
        except UnicodeDecodeError:
            task_id = ""
        task = await self._store.start(task_id, self.worker_id) if task_id else None
        if task is None:
            log.warning(
                "nats_unknown_task_terminated",
                task_id=task_id,
                delivery=msg.metadata.num_delivered,
            )
            with contextlib.suppress(*_NATS_FAILURES):
                await msg.term()
            return None
        return NatsDelivery(msg, task, self.timeout)

    # --- stream, consumer and subscription ---------------------------------------------------

    def _connected(self) -> tuple[Client, JetStreamContext]:
        if self._closed:
            raise QueueUnavailableError("the NATS task queue is closed")
        if self._nc is None or self._js is None:
            raise QueueUnavailableError("the NATS task queue is not connected; call connect()")
        return self._nc, self._js

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        _, js = self._connected()
        await self._ensure_setup()
        if self._sub is None:
            try:
                self._sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
            except _NATS_FAILURES as exc:
                raise QueueUnavailableError(f"cannot subscribe: {_describe(exc)}") from exc
        return self._sub

    async def _drop_subscription(self) -> None:
        sub, self._sub = self._sub, None
        self._needs_setup = True
        if sub is not None:
            with contextlib.suppress(*_NATS_FAILURES):
                await sub.unsubscribe()

    async def _ensure_setup(self) -> None:
        if self._needs_setup:
            async with self._setup_lock:
                if self._needs_setup:
                    await self._setup()

    async def _setup(self) -> None:
        """Create or update the stream and the durable consumer; safe to run from any replica."""
        _, js = self._connected()
        try:
            await self._ensure_stream(js)
            await self._ensure_consumer(js)
        except ConfigError:
            raise
        except _NATS_FAILURES as exc:
            raise QueueUnavailableError(
                f"cannot set up stream {self.stream} on NATS at {self.url}: {_describe(exc)}"
            ) from exc
        self._needs_setup = False

    def _stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=self.duplicate_window,
        )

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        for _ in range(4):  # another replica may create or change it at the same moment
            try:
                info = await js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                if self._had_stream:  # deleted: let the server finish, then look again
                    self._had_stream = False
                    await asyncio.sleep(STREAM_RECREATE_DELAY_S)
                    continue
                try:
                    await js.add_stream(self._stream_config())
                    self._had_stream = True
                    log.info("nats_stream_created", stream=self.stream, subject=self.subject)
                    for callback in self._loss_callbacks:  # a new stream: was one lost?
                        callback()
                    return
                except nats.js.errors.BadRequestError:
                    continue  # created meanwhile with other settings: read it again
            self._had_stream = True
            current = info.config
            if current.retention != RetentionPolicy.WORK_QUEUE or (
                current.storage != StorageType.FILE
            ):
                raise ConfigError(
                    f"NATS stream {self.stream} exists with retention {current.retention} and "
                    f"storage {current.storage}; qtask needs a workqueue stream on file storage "
                    "(delete the stream or choose another name)"
                )
            if current.subjects == [self.subject] and _same(
                current.duplicate_window, self.duplicate_window
            ):
                return
            updated = dataclasses.replace(
                current, subjects=[self.subject], duplicate_window=self.duplicate_window
            )
            try:
                await js.update_stream(updated)
            except nats.js.errors.BadRequestError as exc:
                raise ConfigError(
                    f"cannot update NATS stream {self.stream}: {_describe(exc)}"
                ) from exc
            log.info("nats_stream_updated", stream=self.stream, subject=self.subject)
            return
        raise QueueUnavailableError(f"NATS stream {self.stream} keeps changing; giving up")

    def _consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
        )

    async def _ensure_consumer(self, js: JetStreamContext) -> None:
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        else:
            current = info.config
            if (
                _same(current.ack_wait, self.ack_wait)
                and current.max_deliver == self.max_deliver
                and current.max_ack_pending == self.max_ack_pending
                and current.ack_policy == AckPolicy.EXPLICIT
            ):
                return
        # Creating a durable that exists updates it; identical settings are a no-op, so replicas
        # racing here all succeed.
        try:
            await js.add_consumer(self.stream, self._consumer_config())
        except nats.js.errors.BadRequestError as exc:
            raise ConfigError(
                f"cannot create or update NATS consumer {self.durable} on stream {self.stream}: "
                f"{_describe(exc)}"
            ) from exc
        log.info(
            "nats_consumer_ready",
            consumer=self.durable,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
        )

    # --- connection callbacks ----------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        # While the server is down every reconnect attempt (4 a second) fails the same way:
        # log each different error once.
        error = _describe(exc)
        if error != self._last_error:
            self._last_error = error
            log.warning("nats_error", url=self.url, error=error)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("nats_disconnected", url=self.url)

    async def _on_reconnected(self) -> None:
        self._needs_setup = True
        self._last_error = None
        log.info("nats_reconnected", url=self.url)

    async def _on_closed(self) -> None:
        log.info("nats_closed", url=self.url)


class NatsDelivery:
    """One JetStream message and the task it named, started in the store."""

    def __init__(self, msg: Msg, task: Task, timeout: float) -> None:
        self._msg = msg
        self._task = task
        self._timeout = timeout

    @property
    def task(self) -> Task:
        """The task as started for this delivery (its attempt counted by the store)."""
        return self._task

    @property
    def message(self) -> Msg:
        """The JetStream message, for inspection."""
        return self._msg

    async def ack(self) -> None:
        """Acknowledge and wait for the server to confirm: the message is then deleted."""
        try:
            await self._msg.ack_sync(timeout=self._timeout)
        except _NATS_FAILURES as exc:
            raise QueueUnavailableError(f"ack of task {self._task.id}: {_describe(exc)}") from exc

    async def nak(self) -> None:
        """Hand the message back for immediate redelivery."""
        try:
            await self._msg.nak()
        except _NATS_FAILURES as exc:
            raise QueueUnavailableError(f"nak of task {self._task.id}: {_describe(exc)}") from exc

    async def in_progress(self) -> None:
        """Restart the message's ack_wait, so it is not redelivered while the task runs."""
        try:
            await self._msg.in_progress()
        except _NATS_FAILURES as exc:
            raise QueueUnavailableError(
                f"in-progress of task {self._task.id}: {_describe(exc)}"
            ) from exc


def _same(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) < 1e-3


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text and text != name else name
