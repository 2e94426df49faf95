"""qtask as a Qiskit backend (qtask.client.qiskit) against a real `qtask serve`: counts and
memory through Qiskit's Result, several registers, BackendSamplerV2, job status and cancel."""

from __future__ import annotations

import ast
import math
from collections import Counter
from collections.abc import Iterator

import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister, transpile
from qiskit.exceptions import QiskitError
from qiskit.primitives import BackendSamplerV2
from qiskit.providers import JobStatus
from qiskit.providers.exceptions import QiskitBackendNotFoundError

from qtask.client.qiskit import QTaskBackend, QTaskProvider
from qtask_testkit import ServerProcess, run_readme_example


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("qiskit") / "data", workers=1)
    process.start()
    yield process
    process.terminate()


@pytest.fixture
def backend(server: ServerProcess) -> Iterator[QTaskBackend]:
    provider = QTaskProvider(server.url)
    yield provider.get_backend()
    provider.close()


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2, 2, name="bell")
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


def test_bell_counts_through_backend_run(backend: QTaskBackend) -> None:
    job = backend.run(bell(), shots=1000, seed_simulator=7)
    result = job.result(timeout=60)
    counts = result.get_counts()
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == 1000
    assert result.success
    assert job.status() is JobStatus.DONE
    # Seeded: the same counts again.
    assert backend.run(bell(), shots=1000, seed_simulator=7).result(timeout=60).get_counts() == (
        counts
    )


def test_several_circuits_and_registers_keep_qiskits_key_format(backend: QTaskBackend) -> None:
    low, high = ClassicalRegister(1, "low"), ClassicalRegister(2, "high")
    split = QuantumCircuit(QuantumRegister(3, "q"), low, high, name="split")
    split.x(0)  # low = 1
    split.h(1)
    split.cx(1, 2)  # high = 00 or 11
    split.measure(0, low[0])
    split.measure([1, 2], [high[0], high[1]])
    result = backend.run([bell(), split], shots=200, memory=True).result(timeout=60)
    counts = result.get_counts(split)
    assert set(counts) <= {"00 1", "11 1"}
    assert sum(counts.values()) == 200
    memory = result.get_memory(1)
    assert len(memory) == 200
    assert Counter(memory) == counts
    assert Counter(result.get_memory("bell")) == result.get_counts("bell")


def test_a_circuit_without_measurements_gets_every_qubit_measured(backend: QTaskBackend) -> None:
    circuit = QuantumCircuit(3)
    circuit.x(2)
    counts = backend.run(circuit, shots=10).result(timeout=60).get_counts()
    assert counts == {"100": 10}


def test_backend_sampler_v2_runs_on_qtask(backend: QTaskBackend) -> None:
    sampler = BackendSamplerV2(backend=backend)
    [pub] = sampler.run([bell()], shots=500).result()
    counts = pub.data.c.get_counts()
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == 500


def test_cancel_ends_the_tasks_and_the_job_reads_cancelled(backend: QTaskBackend) -> None:
    # Wide and deep enough to be queued or running while cancelled (one worker process).
    circuits = []
    for _ in range(3):
        slow = QuantumCircuit(20, 20)
        for layer in range(30):
            for qubit in range(20):
                slow.rx(math.pi / (layer + 2), qubit)
            for qubit in range(19):
                slow.cx(qubit, qubit + 1)
        slow.measure(range(20), range(20))
        circuits.append(slow)
    job = backend.run(circuits, shots=100)
    assert job.status() in (JobStatus.QUEUED, JobStatus.RUNNING)
    assert job.cancel()
    assert job.status() is JobStatus.CANCELLED
    result = job.result(timeout=60)
    assert not result.success
    with pytest.raises(QiskitError, match="cancelled"):
        result.get_counts(0)


def test_target_and_options(backend: QTaskBackend, server: ServerProcess) -> None:
    assert backend.num_qubits >= 30
    assert {"cx", "h", "rz", "measure"} <= set(backend.target.operation_names)
    assert backend.coupling_map is None or backend.coupling_map.size() == 0
    assert backend.options.shots == 1024
    assert backend.options.memory is False
    assert backend.max_circuits == 1000
    provider = QTaskProvider(server.url)
    try:
        names = [b.name for b in provider.backends()]
        assert names == ["aer", "fake_brisbane", "fake_torino", "fake_fez"]  # the default first
        assert backend.name == "aer"
        with pytest.raises(QiskitBackendNotFoundError):
            provider.get_backend("no-such-backend")
    finally:
        provider.close()


def test_fake_brisbane_target_comes_from_backends_and_a_transpiled_bell_runs_on_it(
    server: ServerProcess,
) -> None:
    """The circuit transpiled for the device declares its 127 qubits; the backend sends only
    those it uses, which the server's limits (100 qubits; 28 for statevector) take."""
    provider = QTaskProvider(server.url)
    try:
        listed = {entry.name: entry for entry in provider.client.backends()}["fake_brisbane"]
        device = provider.get_backend("fake_brisbane")
        assert device.num_qubits == listed.num_qubits == 127
        assert listed.basis_gates is not None
        assert listed.coupling_map is not None
        assert set(device.target.operation_names) == {*listed.basis_gates, "measure", "reset"}
        assert "ecr" in device.target.operation_names
        edges = {tuple(edge) for edge in device.coupling_map.get_edges()}
        assert edges == set(listed.coupling_map)
        transpiled = transpile(bell(), device, seed_transpiler=1)
        two_qubit = [i for i in transpiled.data if i.operation.num_qubits == 2]
        assert two_qubit
        assert all(i.operation.name == "ecr" for i in two_qubit)
        assert all(
            (transpiled.find_bit(a).index, transpiled.find_bit(b).index) in edges
            for a, b in (i.qubits for i in two_qubit)
        )
        counts = device.run(transpiled, shots=300, seed_simulator=3).result().get_counts()
        assert sum(counts.values()) == 300
        # Noisy, but the Bell outcomes still dominate.
        assert counts.get("00", 0) + counts.get("11", 0) > 240
    finally:
        provider.close()


def test_the_readme_qiskit_example_runs(server: ServerProcess) -> None:
    done = run_readme_example("### Use it from Qiskit", server.url)
    counts_line, memory_line, sampled_line = done.stdout.splitlines()
    counts, status = counts_line.rsplit(" ", 1)
    assert status == "DONE"
    # Seeded: the counts the README shows.
    assert ast.literal_eval(counts) == {"11": 511, "00": 489}
    memory = ast.literal_eval(memory_line)
    assert len(memory) == 4
    assert set(memory) <= {"00", "11"}
    assert sum(ast.literal_eval(sampled_line).values()) == 500
