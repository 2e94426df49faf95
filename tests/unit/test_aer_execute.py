"""How a child calls Aer: on its own thread, without the job thread `AerSimulator.run` starts,
and through `run` when Aer's job function is not the one execution.aer knows."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from qiskit_aer import AerSimulator

from qtask.circuits.ingest import Limits
from qtask.execution import aer
from qtask_testkit import BELL, run_item

LIMITS = Limits(
    max_circuit_bytes=64 << 10, max_qubits=20, max_operations=1000, max_statevector_bytes=64 << 20
)


@pytest.fixture
def simulator(monkeypatch: pytest.MonkeyPatch) -> AerSimulator:
    """A one-thread simulator as a child builds it (without init_process's OOM score)."""
    sim = AerSimulator(max_parallel_threads=1, max_parallel_experiments=1, max_memory_mb=128)
    monkeypatch.setattr(aer, "_simulator", sim)
    monkeypatch.setattr(aer, "_max_statevector_bytes", 64 << 20)
    monkeypatch.setattr(aer, "_execute_directly", False)
    aer._use_job_function(sim)
    return sim


def started_threads(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """Every thread started from now on (recorded, then started as usual)."""
    started: list[threading.Thread] = []
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


def test_a_run_counts_every_shot_and_starts_no_thread(
    simulator: AerSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = started_threads(monkeypatch)
    [outcome] = aer.run_items([run_item("t1", BELL, LIMITS, shots=200)])
    assert outcome.error is None
    assert outcome.counts is not None
    assert sum(outcome.counts.values()) == 200
    assert set(outcome.counts) <= {"00", "11"}
    assert started == []


def test_an_unknown_job_function_falls_back_to_run(
    simulator: AerSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Changed:
        """A simulator whose job function has another shape; `run` is the real one's."""

        def _execute_circuits_job(self, circuits: Any, run_options: Any) -> Any:
            raise AssertionError("a job function of another shape must not be called")

        def run(self, circuits: Any, **options: Any) -> Any:
            return simulator.run(circuits, **options)

    changed = Changed()
    monkeypatch.setattr(aer, "_simulator", changed)
    aer._use_job_function(changed)
    [outcome] = aer.run_items([run_item("t1", BELL, LIMITS, shots=100, seed=7)])
    assert outcome.error is None
    assert outcome.counts is not None
    assert sum(outcome.counts.values()) == 100
