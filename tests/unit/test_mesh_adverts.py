"""FR-001 on receipt and on publication: AdvertInbox and AdvertPublisher without a network."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import structlog.testing

from qtask.mesh import metrics
from qtask.mesh.adverts import AdvertInbox, AdvertPublisher, Rejection, check_advert
from qtask.mesh.protocol import (
    ADVERT_TOPIC,
    MAX_CLOCK_SKEW_S,
    Advert,
    Availability,
    NoiseSpec,
)

NODE = "12D3KooWNodeNodeNodeNodeNodeNodeNodeNodeNodeNode1"
OTHER = "12D3KooWOtherOtherOtherOtherOtherOtherOtherOther2"
NOW = 1_800_000_000.0


def advert(**changes: Any) -> Advert:
    fields: dict[str, Any] = dict(
        node_id=NODE, gates=("h", "cx", "measure"), qubit_range=(1, 5), fidelity=0.97,
        fidelity_measured_at=NOW - 10, noise=NoiseSpec(depolarizing_1q=0.01),
        availability=Availability.AVAILABLE, capacity=2, in_use=0, timestamp=NOW, seq=1,
    )  # fmt: skip
    fields.update(changes)
    return Advert.model_validate(fields)


def raw(**changes: Any) -> bytes:
    data = json.loads(advert().model_dump_json())
    data.update(changes)
    return json.dumps(data).encode()


def reason(result: Advert | Rejection) -> str:
    assert isinstance(result, Rejection), result
    return result.reason


def test_valid_advert_signed_by_its_node_is_accepted() -> None:
    assert check_advert(raw(), signer=NODE, now=NOW) == advert()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"not json", "schema"),
        (raw(fidelity=1.5), "schema"),
        (raw(extra_field=1), "schema"),
        (raw(qubit_range=[3, 2]), "schema"),
        (raw(gates=[]), "schema"),
        (raw(version=2), "version"),
        (raw(timestamp=NOW + MAX_CLOCK_SKEW_S + 1), "future"),
        (raw(in_use=3), "capacity"),
    ],
)
def test_invalid_adverts_are_refused_with_their_reason(data: bytes, expected: str) -> None:
    assert reason(check_advert(data, signer=NODE, now=NOW)) == expected


def test_advert_naming_another_node_than_its_signer_is_forged() -> None:
    result = check_advert(raw(), signer=OTHER, now=NOW)
    assert isinstance(result, Rejection)
    assert (result.reason, result.node_id) == ("forged", NODE)
    assert OTHER in result.detail


def test_clock_skew_within_the_limit_is_accepted() -> None:
    data = raw(timestamp=NOW + MAX_CLOCK_SKEW_S - 1)
    assert isinstance(check_advert(data, signer=NODE, now=NOW), Advert)


async def test_inbox_passes_newer_adverts_and_logs_and_counts_each_rejection_and_stale_one() -> (
    None
):
    seen: list[Advert] = []

    async def accept(a: Advert) -> None:
        seen.append(a)

    inbox = AdvertInbox(accept, clock=lambda: NOW)
    forged_before = metrics.ADVERTS_REJECTED.labels("forged")._value.get()
    stale_before = metrics.ADVERTS_REJECTED.labels("stale")._value.get()
    with structlog.testing.capture_logs() as logs:
        await inbox(NODE, raw(seq=5))
        await inbox(NODE, raw(seq=5))  # the same again: stale
        await inbox(NODE, raw(seq=4))  # older: stale
        await inbox(OTHER, raw(seq=9))  # forged
        await inbox(NODE, raw(seq=6, in_use=1))
    assert [(a.seq, a.in_use) for a in seen] == [(5, 0), (6, 1)]
    rejected = [
        (e["node"], e["signer"], e["reason"]) for e in logs if e["event"] == "advert_rejected"
    ]
    assert rejected == [(NODE, OTHER, "forged")]
    # Out-of-order arrivals are counted as stale but logged only at debug (gossip reorders).
    assert [e["seq"] for e in logs if e["event"] == "advert_stale"] == [5, 4]
    assert metrics.ADVERTS_REJECTED.labels("forged")._value.get() == forged_before + 1
    assert metrics.ADVERTS_REJECTED.labels("stale")._value.get() == stale_before + 2


async def test_publisher_readvertises_on_interval_and_at_once_on_change() -> None:
    published: list[tuple[str, Advert]] = []
    arrived = asyncio.Event()
    in_use = 0

    async def publish(topic: str, data: bytes) -> None:
        published.append((topic, Advert.model_validate_json(data)))
        arrived.set()

    async def next_advert() -> Advert:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 5)
        return published[-1][1]

    clock = iter(range(10**6))
    publisher = AdvertPublisher(
        publish,
        lambda seq, now: advert(seq=seq, in_use=in_use, timestamp=NOW + now),
        interval_s=0.05,
        clock=lambda: float(next(clock)),
    )
    task = asyncio.create_task(publisher.run())
    try:
        first = await next_advert()
        second = await next_advert()  # the interval, nothing changed
        in_use = 1
        publisher.changed()
        changed = await next_advert()
        while changed.in_use != 1:  # an interval advert may have been in flight
            changed = await next_advert()
    finally:
        task.cancel()
    assert {topic for topic, _ in published} == {ADVERT_TOPIC}
    assert first.seq < second.seq < changed.seq
    assert [a.seq for _, a in published] == sorted({a.seq for _, a in published})
    assert publisher.last is not None
    assert publisher.last.in_use == 1


async def test_change_is_published_before_the_interval_elapses() -> None:
    published: list[Advert] = []
    arrived = asyncio.Event()

    async def publish(topic: str, data: bytes) -> None:
        published.append(Advert.model_validate_json(data))
        arrived.set()

    publisher = AdvertPublisher(publish, lambda seq, now: advert(seq=seq), interval_s=3600)
    task = asyncio.create_task(publisher.run())
    try:
        await asyncio.wait_for(arrived.wait(), 5)
        arrived.clear()
        publisher.changed()
        await asyncio.wait_for(arrived.wait(), 5)  # far sooner than the hour's interval
    finally:
        task.cancel()
    assert len(published) == 2
    assert metrics.ADVERTS_PUBLISHED.labels("change")._value.get() >= 1


async def test_publisher_stops_when_cancelled_as_a_change_arrives() -> None:
    # The race of a node's stop(): the last fragment ends (a change) as the loop is cancelled.
    for _ in range(20):
        published = asyncio.Event()

        async def publish(topic: str, data: bytes, published: asyncio.Event = published) -> None:
            published.set()

        publisher = AdvertPublisher(publish, lambda seq, now: advert(seq=seq), interval_s=3600)
        task = asyncio.create_task(publisher.run())
        await asyncio.wait_for(published.wait(), 5)
        await asyncio.sleep(0)
        publisher.changed()
        await asyncio.sleep(0)  # the wait for the change is done, its waiter not yet resumed
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done == {task}
        assert task.cancelled()


async def test_changes_within_the_coalesce_window_go_out_as_one_advert() -> None:
    published: list[Advert] = []
    arrived = asyncio.Event()

    async def publish(topic: str, data: bytes) -> None:
        published.append(Advert.model_validate_json(data))
        arrived.set()

    publisher = AdvertPublisher(
        publish, lambda seq, now: advert(seq=seq), interval_s=3600, coalesce_s=0.2
    )
    task = asyncio.create_task(publisher.run())
    try:
        await asyncio.wait_for(arrived.wait(), 5)
        arrived.clear()
        for _ in range(4):  # a fragment's reserve, start, end and release
            publisher.changed()
            await asyncio.sleep(0)
        await asyncio.wait_for(arrived.wait(), 5)
        arrived.clear()
        # Nothing changed since the burst's advert: the next one is the hour's interval.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(arrived.wait(), 0.4)
    finally:
        task.cancel()
    assert len(published) == 2
