"""The object store: circuits and results kept as one blob per task, on obstore.

`open_object_store(url)` picks the backend from the URL:

- a plain path or `file:///abs/dir`: a local directory (obstore `LocalStore`). obstore writes
  each object to a temporary file next to it and renames it into place, so a reader never sees
  half an object, but it never calls fsync (measured with strace on obstore 0.12). This adapter
  therefore fsyncs the file and its directories after the rename, so a put that returned
  survives a power loss; a crash inside that short window can still leave the new name pointing
  at data the disk never got.
- `s3://bucket` or `s3://bucket/some/prefix`: an S3 bucket (obstore `S3Store`), every key
  under the prefix. Credentials, region and endpoint come from the standard AWS variables
  (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or
  AWS_DEFAULT_REGION, AWS_ENDPOINT_URL; also the web-identity and container credential
  variables), which obstore reads itself. AWS_ALLOW_HTTP is read here: obstore only reads it
  when no client options are given, and this adapter always gives some (the timeouts).
- `memory://`: a dict in this process (obstore `MemoryStore`), new and empty on every call.

Requests time out (2 s to connect, 10 s in all) and are retried with backoff for at most
`retry_timeout` seconds (8 by default), so an S3 server that restarts is ridden out while one
that is gone fails the call in bounded time (about 8 s when the port refuses connections).
Every failure other than "no such object" is raised as ObjectStoreUnavailableError, whose
message names the operation and the key, never a credential.

Deletes on S3 are coalesced: the deletes asked for while one DeleteObjects request is out (and
those of the same event-loop turn) go together in the next one, up to 1,000 keys (S3's limit),
so a worker's batch of completed tasks leaves the pending area in one or two round trips rather
than one per task. Each caller still waits for its own key's request and gets its own error.
Measured against rclone's S3 server on one machine: 0.16 ms of client and 0.17 ms of server CPU
per single DELETE, 0.01 ms and 0.06 ms per key in a bulk delete of 100.

Where a task's objects go (the key layout: the pending and completed areas of the bucket) is the
domain's, qtask.domain.object_keys; this adapter stores whatever keys it is given, refusing only
keys no backend could hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import LocalStore, MemoryStore, S3Store

from qtask.errors import ConfigError, ObjectStoreUnavailableError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

__all__ = [
    "ObjectStoreAdapter",
    "ObjectStoreUnavailableError",
    "open_object_store",
]

ACCEPTED_SCHEMES = ("file://", "s3://", "memory://", "a plain directory path")

# A key for ping to list under: nothing is stored there, so the listing is one tiny request.
_PING_PREFIX = "_qtask-ping"
# Credential variables whose values are scrubbed from every error message.
_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_TOKEN")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\x7f\\#]")
_MAX_DETAIL = 300
# S3's DeleteObjects takes at most 1,000 keys per request.
_MAX_KEYS_PER_DELETE = 1000
# How long close() waits for a DeleteObjects request already out.
_CLOSE_DELETES_WAIT_S = 10.0

_Store = S3Store | LocalStore | MemoryStore


def _check_key(key: str) -> None:
    """Raise ValueError unless `key` is a relative path every backend stores under that name.

    Rejected: empty keys, a leading or trailing `/`, empty, `.` or `..` segments, control
    characters, backslashes and `#` (the local store names its temporary files `name#N`).
    """
    if not isinstance(key, str) or not key or _BAD_KEY_CHARS.search(key):
        raise ValueError(f"invalid object key: {key!r}")
    if any(part in {"", ".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid object key: {key!r}")


# --- the adapter -----------------------------------------------------------------------------


class ObjectStoreAdapter:
    """The ObjectStore port on one obstore store (S3, a local directory or memory)."""

    def __init__(
        self,
        store: _Store,
        *,
        description: str,
        local_root: Path | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        """Wrap `store`.

        `description` names the store in error messages (the URL without credentials);
        `local_root` is the directory of a LocalStore, whose puts are then fsynced; `secrets`
        are strings scrubbed from every error message.
        """
        self._store = store
        self.description = description
        self._local_root = local_root
        self._secrets = tuple(s for s in secrets if s)
        self._closed = False
        # Coalesced deletes (S3 only): keys waiting for the next DeleteObjects, and the task
        # that sends them while there are any.
        self._bulk_delete = isinstance(store, S3Store)
        self._deletes: list[tuple[str, asyncio.Future[None]]] = []
        self._deleter: asyncio.Task[None] | None = None

    async def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing what was there; durable once this returns."""
        self._check_open("put", key)
        _check_key(key)
        try:
            await self._store.put_async(key, data, use_multipart=False)
        except (ObstoreError, OSError) as exc:
            raise self._unavailable("put", key, exc) from exc
        if self._local_root is not None:
            try:
                await asyncio.to_thread(_fsync_object, self._local_root, key)
            except OSError as exc:
                raise self._unavailable("put", key, exc) from exc

    async def get(self, key: str) -> bytes | None:
        """Return the blob under `key`, or None when there is none."""
        self._check_open("get", key)
        _check_key(key)
        try:
            result = await self._store.get_async(key)
            return bytes(await result.bytes_async())
        except (ObstoreError, OSError) as exc:
            if _is_missing_object(exc):
                return None
            raise self._unavailable("get", key, exc) from exc

    async def delete(self, key: str) -> None:
        """Remove the blob under `key`; a key with no blob is fine."""
        self._check_open("delete", key)
        _check_key(key)
        if self._bulk_delete:
            await self._delete_together(key)
            return
        try:
            await self._store.delete_async(key)
        except (ObstoreError, OSError) as exc:
            if _is_missing_object(exc):
                return
            raise self._unavailable("delete", key, exc) from exc

    async def _delete_together(self, key: str) -> None:
        """Delete `key` in the next DeleteObjects request (S3 reports no error for a key that
        is not there); start the sender if none is running."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._deletes.append((key, future))
        if self._deleter is None:
            self._deleter = asyncio.create_task(self._send_deletes())
        await future

    async def _delete_one(self, key: str, future: asyncio.Future[None]) -> None:
        """Delete `key` alone and settle `future` with the outcome (a missing key is fine)."""
        try:
            await self._store.delete_async(key)
        except (ObstoreError, OSError) as exc:
            if not future.done():
                if _is_missing_object(exc):
                    future.set_result(None)
                else:
                    future.set_exception(self._unavailable("delete", key, exc))
            return
        if not future.done():
            future.set_result(None)

    async def _send_deletes(self) -> None:
        """Send the waiting deletes, up to 1,000 keys a request, until none are left."""
        batch: list[tuple[str, asyncio.Future[None]]] = []
        try:
            while self._deletes:
                await asyncio.sleep(0)  # the deletes asked for in this loop turn go along
                batch = self._deletes[:_MAX_KEYS_PER_DELETE]
                del self._deletes[:_MAX_KEYS_PER_DELETE]
                try:
                    await obstore.delete_async(self._store, [key for key, _ in batch])
                except (ObstoreError, OSError):
                    # One key's error fails the whole bulk request (and some servers report a
                    # missing key there): each key again on its own, for its own answer.
                    await asyncio.gather(*(self._delete_one(key, fut) for key, fut in batch))
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
                batch = []
        finally:
            # Anything still waiting here was cut off by this task's own cancellation.
            self._deleter = None
            left, self._deletes = batch + self._deletes, []
            for key, future in left:
                if not future.done():
                    future.set_exception(
                        ObjectStoreUnavailableError(
                            f"object store {self.description}: delete of {key!r} was cancelled"
                        )
                    )

    async def ping(self) -> None:
        """Raise ObjectStoreUnavailableError unless the store answers a listing.

        One LIST request under an empty prefix on S3 (it also fails for a missing bucket or bad
        credentials); for a directory, also that it still exists and is writable.
        """
        self._check_open("ping", _PING_PREFIX)
        root = self._local_root
        if root is not None and not (root.is_dir() and os.access(root, os.W_OK | os.X_OK)):
            raise ObjectStoreUnavailableError(
                f"object store {self.description}: ping failed: {root} is not a writable directory"
            )
        try:
            await self._store.list_with_delimiter_async(prefix=_PING_PREFIX)
        except (ObstoreError, OSError) as exc:
            raise self._unavailable("ping", _PING_PREFIX, exc) from exc

    async def close(self) -> None:
        """Refuse further calls. obstore holds no connection that needs closing.

        The short sleep lets obstore's runtime threads finish handing their last results to
        the event loop: a thread still doing so while the interpreter shuts down aborts the
        process (SIGABRT in pyo3's take-GIL during finalisation; seen on obstore 0.12).
        """
        if self._closed:
            return
        self._closed = True
        if self._deleter is not None:  # deletes already asked for are sent, not dropped
            await asyncio.wait([self._deleter], timeout=_CLOSE_DELETES_WAIT_S)
        await asyncio.sleep(0.05)

    def _check_open(self, operation: str, key: str) -> None:
        if self._closed:
            raise ObjectStoreUnavailableError(
                f"object store {self.description}: {operation} of {key!r} after close"
            )

    def _unavailable(
        self, operation: str, key: str, exc: BaseException
    ) -> ObjectStoreUnavailableError:
        # obstore's message starts with the request and the server's answer; the rest is a
        # Rust debug dump. Keep the first part, short, with any credential value scrubbed.
        detail = str(exc).split("\n\nDebug source:", 1)[0].strip()
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        if len(detail) > _MAX_DETAIL:
            detail = detail[:_MAX_DETAIL] + "..."
        return ObjectStoreUnavailableError(
            f"object store {self.description}: {operation} of {key!r} failed: "
            f"{type(exc).__name__}: {detail}"
        )


def _is_missing_object(exc: BaseException) -> bool:
    """True for "no such object", false for a missing S3 bucket (also a 404 in obstore)."""
    return isinstance(exc, FileNotFoundError) and "NoSuchBucket" not in str(exc)


def _fsync_object(root: Path, key: str) -> None:
    """fsync the file stored under `key` and every directory from its parent up to `root`."""
    path = root.joinpath(*key.split("/"))
    try:
        _fsync_path(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # deleted (or replaced and deleted) since: nothing of ours left to flush
    directory = path.parent
    while True:
        _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)
        if directory == root or root not in directory.parents:
            break
        directory = directory.parent


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- opening from a URL ----------------------------------------------------------------------


def open_object_store(
    url: str,
    *,
    connect_timeout: float = 2.0,
    request_timeout: float = 10.0,
    retry_timeout: float = 8.0,
    max_retries: int = 30,
) -> ObjectStoreAdapter:
    """Open the object store named by `url` (see the module docstring for the forms).

    The timeouts (seconds) apply to S3 only: `connect_timeout` per connection attempt,
    `request_timeout` per request; `retry_timeout` is the time after a call's first attempt
    past which obstore starts no further retry (of server errors, refused or dropped
    connections, timeouts), and `max_retries` caps their number. obstore's backoff is random
    (from 10 ms, doubling on average, to 2 s), so retries are capped by time rather than by
    count: a call fails after about `retry_timeout` when the server is gone, at worst
    `retry_timeout` plus one `request_timeout` when it accepts but never answers. Raises
    ConfigError for a URL this cannot open.
    """
    text = url.strip()
    if not text:
        raise ConfigError(f"objects_url is empty; use one of {', '.join(ACCEPTED_SCHEMES)}")
    if "://" not in text:
        return _open_local(Path(text), text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    shown = _without_userinfo(text)
    if parts.query or parts.fragment:
        raise ConfigError(f"objects_url {shown!r}: query and fragment are not supported")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"objects_url {shown!r}: a file URL must name a local path")
        return _open_local(Path(unquote(parts.path)), shown)
    if scheme == "memory":
        return ObjectStoreAdapter(MemoryStore(), description=shown)
    if scheme == "s3":
        return _open_s3(
            parts.netloc,
            unquote(parts.path).strip("/"),
            shown,
            client_options={
                "allow_http": _allow_http(),
                "connect_timeout": timedelta(seconds=connect_timeout),
                "timeout": timedelta(seconds=request_timeout),
            },
            retry_config={
                "max_retries": max_retries,
                "retry_timeout": timedelta(seconds=retry_timeout),
                "backoff": {
                    # A first retry 10 ms on, not 100: a transient error (rclone's S3 server
                    # answers ~1 % of PUTs into a new folder with "file does not exist" when
                    # tasks come one at a time) then costs ~10 ms, not a 100 ms p99.
                    "init_backoff": timedelta(milliseconds=10),
                    "max_backoff": timedelta(seconds=2),
                    # Each wait is drawn between init and base × the last one: base 4 doubles
                    # it on average (base 2 hovered near 10 ms and spent the 30 retries in ~1 s,
                    # too soon to ride out an S3 restart).
                    "base": 4,
                },
            },
        )
    raise ConfigError(
        f"objects_url {shown!r} has an unsupported scheme {scheme!r}; "
        f"use one of {', '.join(ACCEPTED_SCHEMES)}"
    )


def _open_local(path: Path, shown: str) -> ObjectStoreAdapter:
    root = path.expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"objects_url {shown!r}: cannot create {root}: {exc}") from exc
    with contextlib.suppress(OSError):  # make a newly created directory's own name durable
        _fsync_path(root.parent, os.O_RDONLY | os.O_DIRECTORY)
    return ObjectStoreAdapter(LocalStore(root), description=root.as_uri(), local_root=root)


def _open_s3(
    bucket: str,
    prefix: str,
    shown: str,
    *,
    client_options: ClientConfig,
    retry_config: RetryConfig,
) -> ObjectStoreAdapter:
    if "@" in bucket:
        raise ConfigError(
            f"objects_url {shown!r}: put credentials in the AWS_* variables, not the URL"
        )
    if not bucket:
        raise ConfigError(f"objects_url {shown!r}: an S3 URL needs a bucket (s3://bucket/prefix)")
    if prefix and any(part in {"", ".", ".."} for part in prefix.split("/")):
        raise ConfigError(f"objects_url {shown!r}: invalid prefix {prefix!r}")
    secrets = tuple(os.environ.get(name, "") for name in _SECRET_VARIABLES)
    try:
        store = S3Store(
            bucket,
            prefix=prefix or None,
            client_options=client_options,
            retry_config=retry_config,
        )
    except (ObstoreError, ValueError) as exc:
        detail = str(exc).split("\n\nDebug source:", 1)[0]
        for secret in filter(None, secrets):
            detail = detail.replace(secret, "***")
        raise ConfigError(f"objects_url {shown!r}: {type(exc).__name__}: {detail}") from exc
    return ObjectStoreAdapter(store, description=shown, secrets=secrets)


def _allow_http() -> bool:
    value = os.environ.get("AWS_ALLOW_HTTP", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"AWS_ALLOW_HTTP={value!r} is not a boolean (true or false)")


def _without_userinfo(url: str) -> str:
    """`url` with any `user:password@` removed, for messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()
