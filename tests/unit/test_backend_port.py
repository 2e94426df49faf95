"""Backends without I/O: the admission rule, the catalog, GET /backends and `"backend"` at
submit on the in-memory store, with FakeBackend devices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from qtask.api.app import create_app
from qtask.application.service import TaskService
from qtask.circuits.ingestor import CircuitIngestor
from qtask.config import LimitsSettings
from qtask.domain.backends import BackendCapabilities
from qtask.domain.task import LEGACY_BACKEND, CircuitInfo, Encoding, Task
from qtask.errors import BackendLimitError, UnknownBackendError
from qtask.execution.catalog import BackendCatalog, LocalBackend, aer_only
from qtask.execution.items import RunItem
from qtask.testing import FakeBackend, InMemoryTaskStore, fake_capabilities

BELL = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
    "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
)


def info(num_qubits: int, clifford: bool) -> CircuitInfo:
    return CircuitInfo(Encoding.QASM3, num_qubits, num_qubits, num_qubits, clifford, False, True)


def circuit(num_qubits: int, clifford: bool = True) -> str:
    gate = "h" if clifford else "t"
    body = "".join(f"{gate} q[{i}];\n" for i in range(num_qubits))
    return f'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[{num_qubits}] q;\n{body}'


def aer_capabilities(**limits: Any) -> BackendCapabilities:
    return aer_only(LimitsSettings(**limits)).get("aer").capabilities


# --- the admission rule ----------------------------------------------------------------------


def test_aer_takes_wide_clifford_and_mps_circuits_up_to_max_qubits() -> None:
    aer = aer_capabilities(max_qubits=100, max_statevector_mb=1024)
    assert dict(aer.max_qubits) == {
        "stabilizer": 100,
        "statevector": 26,  # 2^26 amplitudes of 16 bytes = 1024 MiB
        "matrix_product_state": 100,
    }
    aer.admit(info(100, clifford=True), 10)
    aer.admit(info(100, clifford=False), 10)
    assert aer.num_qubits == 100


def test_device_refuses_a_circuit_wider_than_its_limit_naming_it() -> None:
    device = fake_capabilities("dev")
    device.admit(info(5, clifford=False), 1000)
    with pytest.raises(BackendLimitError, match=r"6 qubits; backend dev takes at most 5") as err:
        device.admit(info(6, clifford=True), 10)
    assert err.value.status_code == 422


def test_stabilizer_only_limit_does_not_admit_a_circuit_that_is_not_clifford() -> None:
    capabilities = fake_capabilities(max_qubits={"stabilizer": 50, "statevector": 10})
    capabilities.admit(info(50, clifford=True), 10)
    with pytest.raises(BackendLimitError, match="at most 10 for a circuit that is not Clifford"):
        capabilities.admit(info(11, clifford=False), 10)


def test_device_refuses_shots_over_its_limit_naming_it() -> None:
    with pytest.raises(BackendLimitError, match=r"between 1 and 1000 on backend fake; got 1001"):
        fake_capabilities().admit(info(2, clifford=True), 1001)


def test_num_qubits_of_a_device_is_its_width_not_its_admission_limit() -> None:
    assert fake_capabilities(device_qubits=127).num_qubits == 127


# --- the catalog -----------------------------------------------------------------------------


def catalog() -> BackendCatalog:
    aer = aer_only(LimitsSettings(max_shots=10_000)).get("aer")
    return BackendCatalog(
        {
            "dev": FakeBackend(fake_capabilities("dev")),
            "aer": aer,
            "down": FakeBackend(fake_capabilities("down"), health_answer="provider unreachable"),
        },
        "aer",
    )


def test_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(UnknownBackendError, match=r"'nope'.*aer, dev, down") as err:
        catalog().get("nope")
    assert err.value.status_code == 422


def test_catalog_lists_the_default_first_and_none_means_default() -> None:
    found = catalog()
    assert [b.capabilities.name for b in found.all()] == ["aer", "dev", "down"]
    assert found.get(None).capabilities.name == "aer"


def test_devices_for_the_children_map_local_backends_to_their_noise() -> None:
    local = BackendCatalog(
        {
            "aer": aer_only(LimitsSettings()).get("aer"),
            "b": LocalBackend(fake_capabilities("b"), device="fake_brisbane"),
        },
        "aer",
    )
    assert local.devices() == {"aer": None, "b": "fake_brisbane"}


def test_run_item_carries_the_task_backend() -> None:
    task = Task(id="t", source=BELL, info=info(2, True), shots=10, backend="dev")
    assert RunItem.from_task(task).backend == "dev"
    legacy = Task(id="u", source=BELL, info=info(2, True), shots=10)
    assert RunItem.from_task(legacy).backend == LEGACY_BACKEND == "aer"


# --- HTTP: GET /backends and "backend" at submit ---------------------------------------------


@pytest.fixture
def store() -> InMemoryTaskStore:
    return InMemoryTaskStore()


@pytest.fixture
async def client(store: InMemoryTaskStore) -> AsyncIterator[httpx.AsyncClient]:
    limits = LimitsSettings(max_shots=10_000)
    service = TaskService(
        store, store, CircuitIngestor(limits, pool=None), limits, backends=catalog()
    )
    transport = httpx.ASGITransport(app=create_app(service, max_body_bytes=1 << 16))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


async def test_get_backends_has_the_agreed_shape_with_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/backends")
    assert response.status_code == 200
    body = response.json()
    assert body["default"] == "aer"
    aer, dev, down = body["backends"]
    assert aer == {
        "name": "aer",
        "type": "aer",
        "kind": "local",
        "default": True,
        "num_qubits": 100,
        "max_qubits": {"stabilizer": 100, "statevector": 28, "matrix_product_state": 100},
        "basis_gates": None,
        "coupling_map": None,
        "noise": None,
        "max_shots": 10_000,
        "memory": True,
        "seeds": True,
        "cancel": True,
        "health": "ok",
    }
    assert dev["default"] is False
    assert dev["num_qubits"] == 5
    assert dev["basis_gates"] == ["cz", "rz", "sx", "x"]
    assert dev["coupling_map"] == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert dev["noise"] == "dev"
    assert down["health"] == "provider unreachable"


async def test_submit_without_backend_stores_the_default(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    response = await client.post("/tasks", json={"qc": BELL})
    assert response.status_code == 202
    assert store.tasks[response.json()["task_id"]].backend == "aer"


async def test_submit_with_backend_stores_it(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    response = await client.post("/tasks", json={"qc": BELL, "backend": "dev", "shots": 10})
    assert response.status_code == 202
    assert store.tasks[response.json()["task_id"]].backend == "dev"


async def test_batch_items_each_name_their_backend(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    items = [{"qc": BELL, "backend": "dev", "shots": 10}, {"qc": BELL}]
    response = await client.post("/tasks/batch", json={"tasks": items})
    assert response.status_code == 202
    ids = response.json()["task_ids"]
    assert [store.tasks[i].backend for i in ids] == ["dev", "aer"]


async def test_unknown_backend_is_422_naming_the_known_ones(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    response = await client.post("/tasks", json={"qc": BELL, "backend": "nope"})
    assert response.status_code == 422
    assert response.json() == {
        "status": "error",
        "message": "Unknown backend 'nope'; this service offers aer, dev, down.",
    }
    assert not store.tasks


async def test_circuit_wider_than_the_backend_is_422_naming_the_limit(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    response = await client.post("/tasks", json={"qc": circuit(6), "backend": "dev", "shots": 10})
    assert response.status_code == 422
    assert response.json()["message"] == ("The circuit has 6 qubits; backend dev takes at most 5.")
    assert not store.tasks


async def test_shots_over_the_backend_limit_is_422_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks", json={"qc": BELL, "backend": "dev", "shots": 5000})
    assert response.status_code == 422
    message = response.json()["message"]
    assert message == "shots must be between 1 and 1000 on backend dev; got 5000."


async def test_batch_names_the_item_over_its_backend_limit(
    client: httpx.AsyncClient, store: InMemoryTaskStore
) -> None:
    items = [{"qc": BELL}, {"qc": circuit(6), "backend": "dev", "shots": 10}]
    response = await client.post("/tasks/batch", json={"tasks": items})
    assert response.status_code == 422
    assert response.json()["message"].startswith("tasks[1]: The circuit has 6 qubits")
    assert not store.tasks


def test_a_task_whose_backend_this_worker_lacks_ends_with_that_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Queued while the API offered the backend, then the worker was started without it.
    from qtask.execution import local

    monkeypatch.setattr(local, "_backends", {"aer": None})
    task = Task(id="t", source=BELL, info=info(2, True), shots=10, backend="fake_fez")
    [outcome] = local.run_items([RunItem.from_task(task)])
    assert outcome.counts is None
    assert outcome.error == "This worker has no backend 'fake_fez' (it has aer)."
