"""The node's fault layer: latency before the reply, seeded drops, degradation, expiry."""

from __future__ import annotations

import pytest

from qtask.mesh.faults import FaultLayer, InjectedDropError, effective_noise
from qtask.mesh.protocol import FaultRequest, NoiseSpec


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def _echo(peer: str, data: bytes) -> bytes:
    return data


async def test_latency_is_added_before_every_reply() -> None:
    clock = Clock()
    layer = FaultLayer(clock=clock, sleep=clock.sleep)
    layer.apply(FaultRequest(latency_ms=250))
    assert await layer.wrap(_echo)("p", b"x") == b"x"
    assert clock.slept == [0.25]
    assert layer.active()["latency_ms"] == 250


async def test_drops_are_seeded_so_the_same_seed_drops_the_same_requests() -> None:
    async def outcomes(seed: int) -> list[bool]:
        layer = FaultLayer(seed=seed)
        layer.apply(FaultRequest(drop_rate=0.5))
        handler = layer.wrap(_echo)
        out = []
        for _ in range(40):
            try:
                await handler("p", b"x")
                out.append(True)
            except InjectedDropError:
                out.append(False)
        return out

    first = await outcomes(7)
    assert first == await outcomes(7)
    assert first != await outcomes(8)
    assert 5 < first.count(False) < 35


async def test_faults_clear_themselves_after_their_duration() -> None:
    clock = Clock()
    layer = FaultLayer(clock=clock, sleep=clock.sleep)
    layer.apply(FaultRequest(latency_ms=10, extra_depolarizing=0.1, duration_s=5))
    assert layer.extra_depolarizing == 0.1
    assert layer.remaining_s() == pytest.approx(5)
    clock.now += 5
    assert layer.current() is None
    assert layer.active() == {}
    await layer.wrap(_echo)("p", b"x")
    assert clock.slept == []


def test_clear_and_an_empty_set_remove_every_fault() -> None:
    layer = FaultLayer()
    layer.apply(FaultRequest(drop_rate=1.0))
    layer.apply(FaultRequest(action="clear"))
    assert layer.current() is None
    layer.apply(FaultRequest(latency_ms=5))
    layer.apply(FaultRequest())
    assert layer.current() is None


def test_degradation_adds_to_the_depolarizing_noise_and_caps_at_one() -> None:
    base = NoiseSpec(depolarizing_1q=0.01, depolarizing_2q=0.05, readout=0.02)
    assert effective_noise(base, 0.0) == base
    worse = effective_noise(base, 0.2)
    assert worse.depolarizing_1q == pytest.approx(0.21)
    assert worse.depolarizing_2q == pytest.approx(0.25)
    assert worse.readout == 0.02
    assert effective_noise(base, 0.99).depolarizing_2q == 1.0
