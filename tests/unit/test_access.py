"""API keys, per-key rate limits and pending caps, through the HTTP API over the in-memory store.

The same rules are checked against the real deployments in tests/integration/test_guarded_api.py;
here each rule is checked alone, with a clock the test controls where time matters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import structlog.testing

from qtask.adapters.local_rate import TokenBuckets
from qtask.api.app import create_app
from qtask.api.auth import Gate, key_digest, new_key
from qtask.application.service import Submission
from qtask.config import ApiKey, AuthSettings, load_settings
from qtask.constants import MSG_CANCELLED, MSG_NOT_FOUND
from qtask.errors import ConfigError, TooManyRequestsError, UnauthorizedError
from qtask.testing import InMemoryTaskStore
from qtask_testkit import BELL, in_memory_service, make_task

ALICE, BOB, ALICE_ROTATED = new_key(), new_key(), new_key()
KEYS = (
    ApiKey(name="alice", sha256=key_digest(ALICE)),
    ApiKey(name="bob", sha256=key_digest(BOB)),
    ApiKey(name="alice", sha256=key_digest(ALICE_ROTATED)),
)
NOT_FOUND = {"status": "error", "message": MSG_NOT_FOUND}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def guarded(max_pending: int = 0, **auth: object) -> tuple[InMemoryTaskStore, httpx.AsyncClient]:
    store = InMemoryTaskStore()
    service = in_memory_service(store, max_pending_per_owner=max_pending)
    settings = AuthSettings(enabled=True, keys=KEYS, **auth)  # type: ignore[arg-type]
    buckets = TokenBuckets(settings.rate_per_s, settings.burst) if settings.rate_per_s else None
    app = create_app(service, max_body_bytes=1 << 20, gate=Gate(settings, buckets))
    return store, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    _, client = guarded()
    async with client:
        yield client


async def submit(api: httpx.AsyncClient, key: str, **headers: str) -> str:
    response = await api.post("/tasks", json={"qc": BELL}, headers={**bearer(key), **headers})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic YWxpY2U6eA=="}, {"X-API-Key": ""}],
)
async def test_a_request_without_a_key_is_401(
    api: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for response in (
        await api.post("/tasks", json={"qc": BELL}, headers=headers),
        await api.get("/tasks/x", headers=headers),
        await api.get("/tasks", params={"ids": "x"}, headers=headers),
        await api.delete("/tasks/x", headers=headers),
        await api.post("/tasks/batch", json={"tasks": [{"qc": BELL}]}, headers=headers),
    ):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="qtask"'
        assert response.json()["status"] == "error"
        assert "API key is required" in response.json()["message"]


async def test_a_wrong_key_is_401_and_the_body_is_never_read(api: httpx.AsyncClient) -> None:
    # A body far over the size limit: were it read first, the answer would be 413.
    response = await api.post("/tasks", content=b"x" * (4 << 20), headers=bearer(ALICE + "x"))
    assert response.status_code == 401
    assert response.json() == {"status": "error", "message": "The API key is not valid."}


async def test_operational_routes_need_no_key(api: httpx.AsyncClient) -> None:
    for path in ("/health", "/ready", "/metrics", "/openapi.json"):
        assert (await api.get(path)).status_code == 200, path


async def test_both_header_forms_name_the_same_key(api: httpx.AsyncClient) -> None:
    task_id = await submit(api, ALICE)
    by_header = await api.get(f"/tasks/{task_id}", headers={"X-API-Key": ALICE})
    by_bearer = await api.get(f"/tasks/{task_id}", headers={"authorization": f"bearer {ALICE}"})
    assert by_header.status_code == by_bearer.status_code == 200


# --- ownership -------------------------------------------------------------------------------


async def test_another_keys_task_is_not_found(api: httpx.AsyncClient) -> None:
    task_id = await submit(api, ALICE)
    assert (await api.get(f"/tasks/{task_id}", headers=bearer(ALICE))).status_code == 200
    # Rotated keys share their name, so they share their tasks.
    assert (await api.get(f"/tasks/{task_id}", headers=bearer(ALICE_ROTATED))).status_code == 200
    for response in (
        await api.get(f"/tasks/{task_id}", headers=bearer(BOB)),
        await api.get("/tasks/no-such-task", headers=bearer(BOB)),
        await api.delete(f"/tasks/{task_id}", headers=bearer(BOB)),
    ):
        assert response.status_code == 404
        assert response.json() == NOT_FOUND  # the same answer as an id that does not exist
    listed = await api.get("/tasks", params={"ids": task_id}, headers=bearer(BOB))
    assert listed.json() == {"tasks": [{"task_id": task_id, **NOT_FOUND}]}
    # Bob's failed cancel left it queued; Alice may cancel it.
    cancelled = await api.delete(f"/tasks/{task_id}", headers=bearer(ALICE))
    assert cancelled.json() == {"status": "error", "message": MSG_CANCELLED}


async def test_idempotency_keys_are_per_api_key(api: httpx.AsyncClient) -> None:
    first = await submit(api, ALICE, **{"Idempotency-Key": "run-1"})
    assert await submit(api, ALICE_ROTATED, **{"Idempotency-Key": "run-1"}) == first
    theirs = await submit(api, BOB, **{"Idempotency-Key": "run-1"})
    assert theirs != first
    assert (await api.get(f"/tasks/{theirs}", headers=bearer(BOB))).status_code == 200


async def test_the_request_log_names_the_key_but_never_shows_it(api: httpx.AsyncClient) -> None:
    with structlog.testing.capture_logs() as logs:
        await submit(api, ALICE)
        await api.get("/tasks/x", headers=bearer(BOB + "wrong"))
    lines = [entry for entry in logs if entry["event"] == "http_request"]
    assert [line.get("key") for line in lines] == ["alice", None]
    assert ALICE not in repr(logs)
    assert BOB not in repr(logs)


# --- limits ----------------------------------------------------------------------------------


async def test_over_the_request_rate_is_429_with_retry_after() -> None:
    _, api = guarded(rate_per_s=0.5, burst=3)
    async with api:
        answers = [await api.get("/tasks/x", headers=bearer(ALICE)) for _ in range(4)]
        assert [r.status_code for r in answers] == [404, 404, 404, 429]
        assert answers[-1].headers["retry-after"] == "2"
        assert "key 'alice' may make 0.5 per second" in answers[-1].json()["message"]
        # Each key has its own bucket.
        assert (await api.get("/tasks/x", headers=bearer(BOB))).status_code == 404


async def test_over_the_pending_cap_is_429_and_stores_nothing() -> None:
    store, api = guarded(max_pending=3)
    async with api:
        batch = {"tasks": [{"qc": BELL}] * 4}
        too_many = await api.post("/tasks/batch", json=batch, headers=bearer(ALICE))
        assert too_many.status_code == 429
        assert too_many.headers["retry-after"] == "5"
        assert "key 'alice' has 0 queued or running" in too_many.json()["message"]
        assert store.tasks == {}
        ids = [await submit(api, ALICE) for _ in range(3)]
        refused = await api.post("/tasks", json={"qc": BELL}, headers=bearer(ALICE))
        assert refused.status_code == 429
        assert len(store.tasks) == 3
        await submit(api, BOB)  # Bob's cap is his own
        # A running task is not cancelled under a cap: its run would go on outside the cap.
        await store.start(ids[1], "w")
        running = await api.delete(f"/tasks/{ids[1]}", headers=bearer(ALICE))
        assert running.status_code == 409
        assert "outside the cap" in running.json()["message"]
        await api.delete(f"/tasks/{ids[0]}", headers=bearer(ALICE))  # an ended task frees a place
        await submit(api, ALICE)


async def test_a_retry_at_the_pending_cap_gets_its_original_task() -> None:
    store, api = guarded(max_pending=3)
    async with api:
        first = await submit(api, ALICE, **{"Idempotency-Key": "order-1"})
        batch = {"tasks": [{"qc": BELL}] * 2}
        run = {**bearer(ALICE), "Idempotency-Key": "run-1"}
        ids = (await api.post("/tasks/batch", json=batch, headers=run)).json()["task_ids"]
        assert len(store.tasks) == 3  # at the cap
        fresh = {**bearer(ALICE), "Idempotency-Key": "order-2"}
        assert (await api.post("/tasks", json={"qc": BELL}, headers=fresh)).status_code == 429
        retried = await api.post(
            "/tasks", json={"qc": BELL}, headers={**bearer(ALICE), **{"Idempotency-Key": "order-1"}}
        )
        assert (retried.status_code, retried.json()["task_id"]) == (202, first)
        again = await api.post("/tasks/batch", json=batch, headers=run)
        assert (again.status_code, again.json()["task_ids"]) == (202, ids)
        assert len(store.tasks) == 3


async def test_a_retry_is_answered_without_parsing_its_circuit_again() -> None:
    store, api = guarded()
    async with api:
        key = {"Idempotency-Key": "order-1"}
        first = await submit(api, ALICE, **key)
        # The retry's body is not even a circuit: the key alone names the task it gets.
        retried = await api.post(
            "/tasks", json={"qc": "not qasm"}, headers={**bearer(ALICE), **key}
        )
        assert (retried.status_code, retried.json()["task_id"]) == (202, first)
        # Another key's same Idempotency-Key is a new submission, parsed as such.
        theirs = await api.post("/tasks", json={"qc": "not qasm"}, headers={**bearer(BOB), **key})
        assert theirs.status_code == 400
        assert len(store.tasks) == 1


async def test_keys_off_idempotency_keys_never_meet_a_keys_own() -> None:
    # One store seen by a service with keys off, then on (an operator turned them on).
    store = InMemoryTaskStore()
    service = in_memory_service(store)
    circuit = Submission(BELL, 10)
    anonymous = await service.submit(circuit, "alice:k", owner=None)
    mine = await service.submit(circuit, "k", owner="alice")
    assert mine.id != anonymous.id
    assert (await service.read(mine.id, "alice")).owner == "alice"
    # And back: a keys-off retry still finds the anonymous task, never alice's.
    assert (await service.submit(circuit, "alice:k", owner=None)).id == anonymous.id
    assert (await service.submit(circuit, "k", owner=None)).id not in {anonymous.id, mine.id}


async def test_an_unscoped_key_from_an_older_version_is_a_conflict_not_a_hidden_task() -> None:
    store, api = guarded()
    # Stored by a version that kept keys-off idempotency keys unscoped: "alice:k" as sent.
    old = await store.create(make_task(idempotency_key="alice:k"))
    async with api:
        meeting = {**bearer(ALICE), "Idempotency-Key": "k"}
        answer = await api.post("/tasks", json={"qc": BELL}, headers=meeting)
        assert answer.status_code == 409
        assert "send another Idempotency-Key" in answer.json()["message"]
        assert list(store.tasks) == [old.id]
        await submit(api, ALICE, **{"Idempotency-Key": "k2"})  # other keys are unaffected


# --- the parts -------------------------------------------------------------------------------


async def test_token_bucket_refills_at_the_rate() -> None:
    now = [100.0]
    buckets = TokenBuckets(rate=2.0, burst=2, clock=lambda: now[0])
    assert [await buckets.take("a"), await buckets.take("a")] == [0.0, 0.0]
    assert await buckets.take("a") == pytest.approx(0.5)
    now[0] += 0.25
    assert await buckets.take("a") == pytest.approx(0.25)
    now[0] += 0.25
    assert await buckets.take("a") == 0.0
    now[0] += 60
    assert [await buckets.take("a"), await buckets.take("a")] == [0.0, 0.0]
    assert await buckets.take("a") > 0
    assert await buckets.take("b") == 0.0


async def test_the_gate_when_keys_are_off_lets_everyone_in_anonymously() -> None:
    assert await Gate(AuthSettings()).caller({}) is None


async def test_the_gate_refuses_and_limits() -> None:
    gate = Gate(
        AuthSettings(enabled=True, keys=KEYS, rate_per_s=1, burst=1), TokenBuckets(1, burst=1)
    )
    assert await gate.caller({"x-api-key": BOB}) == "bob"
    with pytest.raises(TooManyRequestsError) as limited:
        await gate.caller({"x-api-key": BOB})
    assert limited.value.headers == {"Retry-After": "1"}
    with pytest.raises(UnauthorizedError):
        await gate.caller({"x-api-key": "qtk_guess"})


def test_a_gate_with_a_rate_but_no_limiter_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="needs a RateLimiter"):
        Gate(AuthSettings(enabled=True, keys=KEYS, rate_per_s=1, burst=1))


def test_new_keys_are_long_and_distinct() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(key) >= 40 for key in keys)


def test_auth_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = key_digest(ALICE)
    monkeypatch.setenv("QTASK_AUTH__ENABLED", "true")
    monkeypatch.setenv("QTASK_AUTH__KEYS", f'[{{"name": "alice", "sha256": "{digest}"}}]')
    monkeypatch.setenv("QTASK_AUTH__RATE_PER_S", "20")
    settings = load_settings()
    assert settings.auth.keys == (ApiKey(name="alice", sha256=digest),)
    assert settings.auth.rate_per_s == 20
    # The short form, easier to write in a compose file: name:sha256, comma-separated.
    monkeypatch.setenv("QTASK_AUTH__KEYS", f"alice:{digest}, bob:{'0' * 64}")
    assert [key.name for key in load_settings().auth.keys] == ["alice", "bob"]


@pytest.mark.parametrize(
    ("auth", "fragment"),
    [
        ({"enabled": True}, "no keys are configured"),
        ({"keys": [{"name": "alice", "sha256": "abc"}]}, "auth.keys.0.sha256"),
        ({"keys": [{"name": "a b", "sha256": "0" * 64}]}, "auth.keys.0.name"),
        ({"rate_per_s": -1}, "auth.rate_per_s"),
        ({"keys": "alice"}, "auth.keys.0.sha256"),
    ],
)
def test_bad_auth_settings_are_named(auth: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_settings(auth=auth)
