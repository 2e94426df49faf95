"""A seed sent to a backend that does not honour seeds (IBM hardware, Braket) is refused (400)
rather than silently ignored: a seed promises repeatable counts, which such a backend cannot
give. The repo's own clients send no seed unless asked (seed_simulator=None, seed=None)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from qtask.api.app import create_app
from qtask.application.service import TaskService
from qtask.circuits.ingestor import CircuitIngestor
from qtask.config import LimitsSettings
from qtask.config_backends import IbmBackendSettings
from qtask.domain.backends import BackendCapabilities, BackendKind
from qtask.execution.catalog import BackendCatalog, LocalBackend, aer_only
from qtask.execution.remote_ibm import IbmRemoteBackend
from qtask.testing import InMemoryTaskStore

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)
NO_SEEDS = BackendCapabilities(
    name="braket_sv",
    type="braket_local",
    kind=BackendKind.LOCAL,
    max_qubits={"statevector": 25},
    max_shots=10_000,
    seeds=False,
)


@pytest.fixture
def store() -> InMemoryTaskStore:
    return InMemoryTaskStore()


@pytest.fixture
async def client(store: InMemoryTaskStore) -> AsyncIterator[httpx.AsyncClient]:
    limits = LimitsSettings()
    catalog = BackendCatalog(
        {"aer": aer_only(limits).get("aer"), "braket_sv": LocalBackend(NO_SEEDS)}, "aer"
    )
    service = TaskService(
        store, store, CircuitIngestor(limits, pool=None), limits, backends=catalog
    )
    app = create_app(service, max_body_bytes=limits.max_body_bytes)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


async def test_a_seed_for_a_backend_without_seeds_is_refused_400_naming_it(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    response = await client.post("/tasks", json={"qc": BELL, "backend": "braket_sv", "seed": 7})
    assert response.status_code == 400
    message = response.json()["message"]
    assert message.startswith("Backend braket_sv does not honour seeds")
    assert not store.tasks


async def test_the_same_task_without_a_seed_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks", json={"qc": BELL, "backend": "braket_sv"})
    assert response.status_code == 202


async def test_a_seed_for_a_backend_with_seeds_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks", json={"qc": BELL, "backend": "aer", "seed": 7})
    assert response.status_code == 202


async def test_a_batch_with_one_seeded_task_for_it_is_refused_naming_the_task(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    tasks = [{"qc": BELL, "backend": "braket_sv"}, {"qc": BELL, "backend": "braket_sv", "seed": 1}]
    response = await client.post("/tasks/batch", json={"tasks": tasks})
    assert response.status_code == 400
    assert response.json()["message"].startswith("tasks[1]: Backend braket_sv does not honour")
    assert not store.tasks


@pytest.mark.parametrize(("device", "seeds"), [("ibm_brisbane", False), ("fake_brisbane", True)])
def test_an_ibm_backend_honours_seeds_only_on_a_fake_device(device: str, seeds: bool) -> None:
    # qiskit-ibm-runtime's local testing mode runs a fake device on Aer, which takes the seed.
    settings = IbmBackendSettings(type="ibm", device=device)
    assert IbmRemoteBackend("ibm", settings, LimitsSettings()).capabilities.seeds is seeds
