"""`qtask node` processes: state hand-off between fragments (mesh part 2) and the fault layer
(FAULT_PROTOCOL: latency, drops, fidelity degradation)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from qiskit import QuantumCircuit

from meshkit import MeshProcess, mesh_client, node_process, poll
from qtask.errors import MeshPeerError, MeshProtocolError
from qtask.mesh.adverts import AdvertInbox
from qtask.mesh.handoff import decode_state, encode_state, run_slice
from qtask.mesh.host import call
from qtask.mesh.ir import circuit_to_ir
from qtask.mesh.protocol import (
    ADVERT_TOPIC,
    EXECUTE_PROTOCOL,
    FAULT_PROTOCOL,
    PING_PROTOCOL,
    Advert,
    ExecuteReply,
    ExecuteRequest,
    FaultReply,
    FaultRequest,
    NoiseSpec,
    Ping,
    Pong,
)

NOISY = NoiseSpec(depolarizing_1q=0.01, depolarizing_2q=0.03, readout=0.01)


def execute(circuit: QuantumCircuit, **extra: Any) -> ExecuteRequest:
    return ExecuteRequest(
        correlation_id=uuid.uuid4().hex, circuit=circuit_to_ir(circuit), shots=2000, seed=5,
        **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshProcess, MeshProcess]]:
    directory = tmp_path_factory.mktemp("handoff")
    ideal = node_process(directory, "ideal", faults_enabled=True, fault_seed=3).start()
    noisy = node_process(
        directory, "noisy", noise=NOISY.model_dump(), max_density_qubits=3, bootstrap=[ideal.addr]
    ).start()
    yield ideal, noisy
    for node in (ideal, noisy):
        node.terminate()


def _first_half() -> QuantumCircuit:
    circuit = QuantumCircuit(3)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.ry(0.7, 2)
    return circuit


def _second_half() -> QuantumCircuit:
    circuit = QuantumCircuit(3, 3)
    circuit.cx(1, 2)
    circuit.rz(0.3, 0)
    circuit.h(0)
    circuit.measure(range(3), range(3))
    return circuit


async def test_a_state_handed_from_an_ideal_to_a_noisy_node_samples_the_noisy_slice(
    nodes: tuple[MeshProcess, MeshProcess],
) -> None:
    ideal, noisy = nodes
    async with mesh_client(bootstrap=[ideal.addr]) as client:
        await client.connect(noisy.addr)
        first = await call(client, ideal.peer_id, EXECUTE_PROTOCOL,
                           execute(_first_half(), return_state=True), ExecuteReply, 30)  # fmt: skip
        assert first.ok, first.error
        assert first.counts is None
        assert first.state is not None
        vector = decode_state(first.state, 3)
        assert vector.ndim == 1  # an ideal node hands off a statevector
        local_first = run_slice(circuit_to_ir(_first_half()), NoiseSpec(), 1, 5, None, True)[1]
        assert local_first is not None
        assert abs(abs(vector.conj() @ local_first) - 1) < 1e-9
        second = await call(
            client,
            noisy.peer_id,
            EXECUTE_PROTOCOL,
            execute(_second_half(), input_state=first.state),
            ExecuteReply,
            30,
        )
        assert second.ok, second.error
        expected, _ = run_slice(circuit_to_ir(_second_half()), NOISY, 2000, 5, vector, False)
        assert second.counts == expected  # the noisy node ran its slice on the state it got
        # A noisy node hands off a density matrix (one trajectory would be the wrong state).
        third = await call(client, noisy.peer_id, EXECUTE_PROTOCOL,
                           execute(_first_half(), return_state=True), ExecuteReply, 30)  # fmt: skip
        assert third.ok
        assert third.state is not None
        assert decode_state(third.state, 3).shape == (8, 8)


async def test_a_state_wider_than_the_nodes_cap_is_refused_with_state_too_wide(
    nodes: tuple[MeshProcess, MeshProcess],
) -> None:
    ideal, noisy = nodes
    wide = QuantumCircuit(4)
    wide.h(range(4))
    async with mesh_client(bootstrap=[ideal.addr]) as client:
        await client.connect(noisy.addr)
        reply = await call(client, noisy.peer_id, EXECUTE_PROTOCOL,
                           execute(wide, return_state=True), ExecuteReply, 30)  # fmt: skip
        assert not reply.ok
        assert reply.error is not None
        assert reply.error.code == "state_too_wide"
        assert "at most 3 qubits" in reply.error.message
        four = run_slice(circuit_to_ir(wide), NoiseSpec(), 1, 1, None, True)[1]
        assert four is not None
        mismatched = execute(_second_half(), input_state=encode_state(four))
        bad = await call(client, ideal.peer_id, EXECUTE_PROTOCOL, mismatched, ExecuteReply, 30)
        assert not bad.ok
        assert bad.error is not None
        assert "4 qubits" in bad.error.message


async def test_fault_layer_adds_latency_drops_requests_and_degrades_fidelity(
    nodes: tuple[MeshProcess, MeshProcess],
) -> None:
    ideal, noisy = nodes
    adverts: dict[str, Advert] = {}

    async def on_advert(advert: Advert) -> None:
        adverts[advert.node_id] = advert

    async with mesh_client(
        topics={ADVERT_TOPIC: AdvertInbox(on_advert)}, bootstrap=[ideal.addr]
    ) as client:
        await client.connect(noisy.addr)
        await poll(lambda: ideal.peer_id in adverts, timeout=20)
        healthy = adverts[ideal.peer_id].fidelity

        async def fault(**fields: Any) -> FaultReply:
            return await call(client, ideal.peer_id, FAULT_PROTOCOL, FaultRequest(**fields),
                              FaultReply, 30)  # fmt: skip

        async def ping_s() -> float:
            started = time.monotonic()
            await call(client, ideal.peer_id, PING_PROTOCOL, Ping(nonce="n"), Pong, 10)
            return time.monotonic() - started

        reply = await fault(extra_depolarizing=0.2, duration_s=4)
        assert reply.active["extra_depolarizing"] == 0.2
        degraded = await poll(
            lambda: adverts[ideal.peer_id].fidelity < healthy - 0.1 and adverts[ideal.peer_id],
            timeout=20,
        )
        assert degraded.noise.depolarizing_2q == pytest.approx(0.2)
        # After duration_s the node clears the fault, re-calibrates and advertises again.
        await poll(lambda: adverts[ideal.peer_id].fidelity > healthy - 0.01, timeout=20)
        reply = await fault(latency_ms=400)
        assert reply.ok
        assert reply.active["latency_ms"] == 400
        assert await ping_s() >= 0.4
        assert (await fault(action="clear")).active == {}
        assert await ping_s() < 0.4
        await fault(drop_rate=1.0)
        with pytest.raises(MeshPeerError):
            await call(client, ideal.peer_id, PING_PROTOCOL, Ping(nonce="n"), Pong, 10)
        await fault(action="clear")
        # A node without faults_enabled does not speak the fault protocol at all.
        with pytest.raises(MeshProtocolError):
            await call(client, noisy.peer_id, FAULT_PROTOCOL, FaultRequest(latency_ms=1),
                       FaultReply, 10)  # fmt: skip
