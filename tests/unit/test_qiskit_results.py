"""How qtask.client.qiskit turns qtask's task bodies into Qiskit's Result (no server)."""

from __future__ import annotations

from collections import Counter

from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.providers import JobStatus
from qiskit.result import Result

from qtask.client.models import TaskResult
from qtask.client.qiskit import _experiment, _header, _hex, _status


def _result(*experiments: object) -> Result:
    return Result(
        backend_name="aer", backend_version="1", job_id="j", success=True, results=experiments
    )


def test_keys_become_qiskits_hexadecimal() -> None:
    assert [_hex("0"), _hex("11"), _hex("10 01"), _hex("")] == ["0x0", "0x3", "0x9", "0x0"]


def test_counts_and_memory_round_trip_through_result_with_two_registers() -> None:
    circuit = QuantumCircuit(
        QuantumRegister(3), ClassicalRegister(1, "a"), ClassicalRegister(2, "b")
    )
    memory = ["01 1", "10 0", "01 1"]
    task = TaskResult("t", "completed", counts=dict(Counter(memory)), memory=memory)
    result = _result(_experiment(task, _header(circuit), 3, True))
    assert result.get_counts() == {"01 1": 2, "10 0": 1}
    assert result.get_memory() == memory


def test_an_unmeasured_circuit_is_keyed_by_what_the_server_measured() -> None:
    circuit = QuantumCircuit(3)  # no classical bits: the server measured all three qubits
    task = TaskResult("t", "completed", counts={"101": 4})
    assert _result(_experiment(task, _header(circuit), 4, False)).get_counts() == {"101": 4}


def test_job_status_follows_the_tasks() -> None:
    pending = TaskResult("a", "pending")
    done = TaskResult("b", "completed", counts={"0": 1})
    cancelled = TaskResult("c", "error", error="Task was cancelled.")
    failed = TaskResult("d", "error", error="The simulator failed: x")
    assert _status([pending, pending]) is JobStatus.QUEUED
    assert _status([pending, done]) is JobStatus.RUNNING
    assert _status([done, done]) is JobStatus.DONE
    assert _status([done, cancelled]) is JobStatus.CANCELLED
    assert _status([cancelled, failed]) is JobStatus.ERROR


def test_memory_asked_for_but_missing_is_an_unsuccessful_experiment() -> None:
    task = TaskResult("t", "completed", counts={"11": 2}, memory=None)
    experiment = _experiment(task, _header(QuantumCircuit(2, 2)), 2, True)
    assert not experiment.success
    assert "no per-shot results" in experiment.status
