"""The object store adapter on a local directory, in memory and on a real S3 server (rclone)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qtask.adapters.objects import ObjectStoreAdapter, open_object_store
from qtask.domain.object_keys import circuit_key, program_key, result_key
from qtask.errors import ConfigError, ObjectStoreUnavailableError, QTaskError
from servers import S3_BUCKET, S3Server

MiB = 1024 * 1024


@dataclass
class Opened:
    """A store under test and where its objects land on disk (None for memory)."""

    store: ObjectStoreAdapter
    url: str
    root: Path | None
    server: S3Server | None = None


def _use_s3_env(monkeypatch: pytest.MonkeyPatch, server: S3Server) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=["local", "file-url", "memory", "s3", "s3-prefix"])
async def opened(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Opened]:
    kind: str = request.param
    server: S3Server | None = None
    if kind == "local":
        url, root = str(tmp_path / "objects"), tmp_path / "objects"
    elif kind == "file-url":
        url, root = (tmp_path / "nested" / "objects").as_uri(), tmp_path / "nested" / "objects"
    elif kind == "memory":
        url, root = "memory://", None
    else:
        server = request.getfixturevalue("s3_server")
        assert server is not None
        _use_s3_env(monkeypatch, server)
        bucket_dir = server.dir / "data" / S3_BUCKET
        if kind == "s3":
            url, root = f"s3://{S3_BUCKET}", bucket_dir
        else:
            url, root = f"s3://{S3_BUCKET}/some/prefix", bucket_dir / "some" / "prefix"
    store = open_object_store(url)
    await store.ping()
    yield Opened(store, url, root, server)
    await store.close()


# --- the port, on every backend --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, 5 * MiB])
async def test_put_get_roundtrip_of_binary_data(opened: Opened, size: int) -> None:
    data = os.urandom(size)
    await opened.store.put("blobs/data.bin", data)
    got = await opened.store.get("blobs/data.bin")
    assert type(got) is bytes
    assert got == data


async def test_every_byte_value_survives(opened: Opened) -> None:
    data = bytes(range(256)) * 4
    await opened.store.put("bytes.bin", data)
    assert await opened.store.get("bytes.bin") == data


async def test_put_overwrites(opened: Opened) -> None:
    await opened.store.put("results/x.json", b'{"v": 1, "long": "' + b"x" * 1000 + b'"}')
    await opened.store.put("results/x.json", b'{"v": 2}')
    assert await opened.store.get("results/x.json") == b'{"v": 2}'


async def test_get_missing_is_none(opened: Opened) -> None:
    assert await opened.store.get("results/never-written.json") is None
    assert await opened.store.get("no/such/deep/key") is None


async def test_delete_then_get_is_none(opened: Opened) -> None:
    await opened.store.put("circuits/a.qasm", b"OPENQASM 3.0;")
    await opened.store.delete("circuits/a.qasm")
    assert await opened.store.get("circuits/a.qasm") is None


async def test_delete_missing_is_fine(opened: Opened) -> None:
    await opened.store.delete("circuits/never-written.qasm")
    await opened.store.delete("nowhere/at/all")
    await opened.store.put("circuits/once.qasm", b"x")
    await opened.store.delete("circuits/once.qasm")
    await opened.store.delete("circuits/once.qasm")


async def test_nested_keys_are_distinct(opened: Opened) -> None:
    keys = ["a/b/c/d.bin", "a/b/c/e.bin", "a/b/f.bin", "g.bin", "a/b/c/d.bin.bak"]
    for key in keys:
        await opened.store.put(key, key.encode())
    for key in keys:
        assert await opened.store.get(key) == key.encode()
    await opened.store.delete("a/b/c/d.bin")
    assert await opened.store.get("a/b/c/d.bin") is None
    assert await opened.store.get("a/b/c/e.bin") == b"a/b/c/e.bin"


async def test_objects_land_under_their_key(opened: Opened) -> None:
    if opened.root is None:
        pytest.skip("memory has no directory")
    task_id = "4f1d7c2e-0000-4000-8000-000000000001"
    await opened.store.put(circuit_key(task_id), b"OPENQASM 3.0;")
    landed = opened.root / "pending" / "4f" / f"{task_id}.qasm"
    assert landed.read_bytes() == b"OPENQASM 3.0;"


async def test_concurrent_puts(opened: Opened) -> None:
    keys = [result_key(f"task-{i}") for i in range(100)]
    await asyncio.gather(
        *(opened.store.put(key, f"{i}".encode() * (i + 1)) for i, key in enumerate(keys))
    )
    got = await asyncio.gather(*(opened.store.get(key) for key in keys))
    assert got == [f"{i}".encode() * (i + 1) for i in range(100)]


async def test_concurrent_puts_to_one_key_leave_one_whole_value(opened: Opened) -> None:
    values = [bytes([i]) * 10_000 for i in range(20)]
    await asyncio.gather(*(opened.store.put("same.bin", value) for value in values))
    assert await opened.store.get("same.bin") in values


BAD_KEYS = ["", "/abs", "trailing/", "a//b", "a/../b", "..", "./a", "a/./b", "a\\b", "a\0b", "a#1"]


async def test_bad_keys_are_refused(opened: Opened) -> None:
    for key in BAD_KEYS:
        with pytest.raises(ValueError, match="invalid object key"):
            await opened.store.put(key, b"x")
        with pytest.raises(ValueError, match="invalid object key"):
            await opened.store.get(key)
        with pytest.raises(ValueError, match="invalid object key"):
            await opened.store.delete(key)


async def test_closed_store_refuses_calls(opened: Opened) -> None:
    await opened.store.close()
    with pytest.raises(ObjectStoreUnavailableError, match="after close"):
        await opened.store.put("k", b"x")
    with pytest.raises(ObjectStoreUnavailableError, match="after close"):
        await opened.store.get("k")
    await opened.store.close()


# --- local directory -------------------------------------------------------------------------


async def test_local_store_creates_its_directory(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "er" / "objects"
    store = open_object_store(f"file://{root}")
    assert root.is_dir()
    await store.put("circuits/x.qasm", b"hi")
    assert (root / "circuits" / "x.qasm").read_bytes() == b"hi"
    assert [p.name for p in (root / "circuits").iterdir()] == ["x.qasm"]  # no temporary left
    await store.close()


async def test_local_relative_path_resolves_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_object_store("rel/objects")
    await store.put("k.bin", b"1")
    assert (tmp_path / "rel" / "objects" / "k.bin").read_bytes() == b"1"
    await store.close()


async def test_local_data_is_visible_to_a_second_store(tmp_path: Path) -> None:
    first = open_object_store(str(tmp_path / "objects"))
    await first.put("results/r.json", b"{}")
    second = open_object_store((tmp_path / "objects").as_uri())
    assert await second.get("results/r.json") == b"{}"
    await first.close()
    await second.close()


async def test_local_ping_fails_when_the_directory_is_gone(tmp_path: Path) -> None:
    store = open_object_store(str(tmp_path / "objects"))
    (tmp_path / "objects").rmdir()
    with pytest.raises(ObjectStoreUnavailableError, match="ping"):
        await store.ping()
    await store.close()


async def test_local_put_failure_is_unavailable(tmp_path: Path) -> None:
    store = open_object_store(str(tmp_path / "objects"))
    (tmp_path / "objects" / "blocked").write_bytes(b"a file where a directory must go")
    with pytest.raises(ObjectStoreUnavailableError, match=r"put of 'blocked/x' failed"):
        await store.put("blocked/x", b"1")
    await store.close()


def test_local_directory_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot create"):
        open_object_store(str(tmp_path / "file" / "objects"))


async def test_memory_stores_are_separate() -> None:
    first, second = open_object_store("memory://"), open_object_store("memory://")
    await first.put("k", b"1")
    assert await second.get("k") is None
    await first.close()
    await second.close()


# --- S3 only ---------------------------------------------------------------------------------


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    _use_s3_env(monkeypatch, s3_server)
    return s3_server


@pytest.mark.parametrize("prefix", ["", "/some/prefix"])
async def test_s3_data_survives_a_restart_and_is_seen_by_a_second_store(
    s3_env: S3Server, prefix: str
) -> None:
    url = f"s3://{S3_BUCKET}{prefix}"
    first = open_object_store(url)
    data = os.urandom(100_000)
    await first.put("results/r.json", data)
    s3_env.restart()
    second = open_object_store(url)
    assert await second.get("results/r.json") == data
    assert await first.get("results/r.json") == data
    await first.close()
    await second.close()


async def test_s3_objects_land_under_the_prefix(s3_env: S3Server) -> None:
    bucket_dir = s3_env.dir / "data" / S3_BUCKET
    store = open_object_store(f"s3://{S3_BUCKET}/some/prefix/")
    plain = open_object_store(f"s3://{S3_BUCKET}")
    await store.put(program_key("t1"), b"QPY")
    assert program_key("t1") == "programs/t1/t1.qpy"
    assert (bucket_dir / "some" / "prefix" / "programs" / "t1" / "t1.qpy").read_bytes() == b"QPY"
    assert await plain.get("some/prefix/programs/t1/t1.qpy") == b"QPY"
    assert await plain.get("programs/t1/t1.qpy") is None
    await store.close()
    await plain.close()


async def test_s3_put_rides_out_a_restart(s3_env: S3Server) -> None:
    store = open_object_store(f"s3://{S3_BUCKET}")
    await store.put("before.bin", b"1")
    s3_env.stop(signal.SIGKILL)
    restarter = threading.Timer(1.0, s3_env.start)
    restarter.start()
    try:
        started = time.monotonic()
        await store.put("during.bin", b"2")  # retried until the server is back
        assert time.monotonic() - started >= 0.5
    finally:
        restarter.join()
    assert await store.get("during.bin") == b"2"
    assert await store.get("before.bin") == b"1"
    await store.close()


async def test_s3_stopped_server_fails_put_in_bounded_time(s3_env: S3Server) -> None:
    store = open_object_store(f"s3://{S3_BUCKET}/p")
    await store.put("k.bin", b"1")
    s3_env.stop(signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailableError) as raised:
        await store.put("results/k.json", b"2")
    assert time.monotonic() - started < 15
    message = str(raised.value)
    assert "put of 'results/k.json'" in message
    assert s3_env.env["AWS_SECRET_ACCESS_KEY"] not in message
    assert s3_env.env["AWS_ACCESS_KEY_ID"] not in message
    assert isinstance(raised.value, QTaskError)
    await store.close()


async def test_s3_short_retry_timeout_fails_fast(s3_env: S3Server) -> None:
    store = open_object_store(f"s3://{S3_BUCKET}", retry_timeout=0.5)
    s3_env.stop(signal.SIGKILL)
    started = time.monotonic()
    for call in (store.ping(), store.get("k"), store.delete("k")):
        with pytest.raises(ObjectStoreUnavailableError):
            await call
    assert time.monotonic() - started < 6
    await store.close()


async def test_s3_wrong_secret_is_unavailable_and_not_echoed(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all-0123456789")
    store = open_object_store(f"s3://{S3_BUCKET}")
    with pytest.raises(ObjectStoreUnavailableError) as raised:
        await store.put("k", b"1")
    assert "not-the-secret-at-all" not in str(raised.value)
    with pytest.raises(ObjectStoreUnavailableError):
        await store.ping()
    await store.close()


async def test_s3_missing_bucket_is_unavailable_not_missing(s3_env: S3Server) -> None:
    store = open_object_store("s3://no-such-bucket")
    with pytest.raises(ObjectStoreUnavailableError, match="NoSuchBucket"):
        await store.get("k")
    with pytest.raises(ObjectStoreUnavailableError):
        await store.put("k", b"1")
    with pytest.raises(ObjectStoreUnavailableError):
        await store.ping()
    with pytest.raises(ObjectStoreUnavailableError):
        await store.delete("k")
    await store.close()


async def test_s3_without_allow_http_refuses_a_plain_http_endpoint(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    store = open_object_store(f"s3://{S3_BUCKET}", retry_timeout=0.5)
    with pytest.raises(ObjectStoreUnavailableError):
        await store.put("k", b"1")
    await store.close()


# --- configuration and key helpers -----------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["gs://bucket/x", "http://example.com/x", "redis://localhost", "ftp://host/dir"]
)
def test_unsupported_scheme_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_object_store(url)
    message = str(raised.value)
    assert url in message
    for accepted in ("file://", "s3://", "memory://"):
        assert accepted in message


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("s3://", "needs a bucket"),
        ("s3:///prefix", "needs a bucket"),
        ("s3://bucket/a//b", "invalid prefix"),
        ("s3://bucket/x?region=eu", "query"),
        ("file://otherhost/dir", "local path"),
    ],
)
def test_malformed_urls_are_config_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_object_store(url)


def test_credentials_in_the_url_are_refused_and_not_echoed() -> None:
    with pytest.raises(ConfigError) as raised:
        open_object_store("s3://AKIDEXAMPLE:supersecretvalue@bucket/prefix")
    assert "supersecretvalue" not in str(raised.value)
    assert "AKIDEXAMPLE" not in str(raised.value)


def test_bad_allow_http_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ALLOW_HTTP", "maybe")
    with pytest.raises(ConfigError, match="AWS_ALLOW_HTTP"):
        open_object_store("s3://bucket")


# --- S3: deletes coalesced into DeleteObjects requests ----------------------------------------


def _count_bulk_deletes(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], asyncio.Event]:
    """Record the number of keys of each DeleteObjects request the adapter sends; the event
    is set when the first one is out."""
    import qtask.adapters.objects as objects_module

    sizes: list[int] = []
    sent = asyncio.Event()
    real = objects_module.obstore.delete_async

    async def counted(store: object, paths: list[str]) -> None:
        sizes.append(len(paths))
        sent.set()
        await real(store, paths)  # type: ignore[arg-type]

    monkeypatch.setattr(objects_module.obstore, "delete_async", counted)
    return sizes, sent


async def test_s3_concurrent_deletes_share_one_request_and_remove_every_key(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_object_store(f"s3://{S3_BUCKET}")
    keys = [circuit_key(f"task-{i:03d}") for i in range(50)]
    await asyncio.gather(*(store.put(key, b"x") for key in keys))
    await store.put("kept.bin", b"k")
    sizes, _ = _count_bulk_deletes(monkeypatch)
    assert await asyncio.gather(*(store.delete(key) for key in keys)) == [None] * 50
    assert sizes == [50]
    assert [await store.get(key) for key in keys] == [None] * 50
    assert await store.get("kept.bin") == b"k"
    await store.close()


async def test_s3_deletes_asked_for_while_one_is_out_go_in_the_next_request(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_object_store(f"s3://{S3_BUCKET}")
    keys = [result_key(f"task-{i}") for i in range(6)]
    for key in keys:
        await store.put(key, b"x")
    sizes, sent = _count_bulk_deletes(monkeypatch)
    first = asyncio.create_task(store.delete(keys[0]))
    await sent.wait()  # the first request is out
    await asyncio.gather(first, *(store.delete(key) for key in keys[1:]))
    assert sizes == [1, 5]
    assert [await store.get(key) for key in keys] == [None] * 6
    await store.close()


async def test_s3_a_cancelled_delete_leaves_the_others_to_finish(s3_env: S3Server) -> None:
    store = open_object_store(f"s3://{S3_BUCKET}")
    keys = [circuit_key(f"task-{i}") for i in range(3)]
    for key in keys:
        await store.put(key, b"x")
    waiting = [asyncio.create_task(store.delete(key)) for key in keys]
    await asyncio.sleep(0)
    waiting[1].cancel()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], asyncio.CancelledError)
    assert await store.get(keys[0]) is None
    assert await store.get(keys[2]) is None
    await store.delete(keys[1])  # a later delete still works
    assert await store.get(keys[1]) is None
    await store.close()


async def test_s3_deletes_on_a_stopped_server_each_fail_naming_their_key(
    s3_env: S3Server,
) -> None:
    store = open_object_store(f"s3://{S3_BUCKET}", retry_timeout=0.5)
    s3_env.stop(signal.SIGKILL)
    keys = ["pending/a1/a.qasm", "pending/b2/b.qasm"]
    results = await asyncio.gather(*(store.delete(key) for key in keys), return_exceptions=True)
    for key, result in zip(keys, results, strict=True):
        assert isinstance(result, ObjectStoreUnavailableError)
        assert f"delete of {key!r}" in str(result)
        assert s3_env.env["AWS_SECRET_ACCESS_KEY"] not in str(result)
    await store.close()
