"""The `ibm` backend's submit/result path in qiskit-ibm-runtime's local testing mode (a fake
device as the Sampler's mode: no network), in-process and through a real `qtask serve` (its
provider child process), and against a real account only when QISKIT_IBM_TOKEN is set."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from qtask.application.poller import RemotePoller
from qtask.config import LimitsSettings
from qtask.config_backends import IbmBackendSettings
from qtask.domain.remote import RemoteState, RemoteStatus
from qtask.domain.task import Status, Task, new_task_id
from qtask.execution.remote_ibm import IbmRemoteBackend
from qtask.testing import InMemoryRemoteJobs, InMemoryTaskStore
from qtask.worker.remote import RemoteSubmitter
from qtask_testkit import BELL, BELL_INFO, ServerProcess, submit, wait_done


# The fake device of these tests: qiskit-ibm-runtime's local mode builds a device's whole
# noise model for each job, 0.5 s for this 5-qubit one against 5-18 s for fake_brisbane's 127.
class LocalService:
    """What the backend needs of QiskitRuntimeService, with a fake device (local mode)."""

    def backend(self, name: str) -> object:
        from qiskit_ibm_runtime.fake_provider import FakeManilaV2

        assert name == "fake_manila"
        return FakeManilaV2()


async def _until_ended(backend: IbmRemoteBackend, job_id: str, within_s: float) -> RemoteStatus:
    deadline = time.monotonic() + within_s
    while True:
        status = (await backend.statuses([job_id]))[job_id]
        if status.state.ended or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


async def test_a_bell_submitted_in_local_testing_mode_completes_with_all_its_shots() -> None:
    settings = IbmBackendSettings(type="ibm", device="fake_manila")
    backend = IbmRemoteBackend("ibm", settings, LimitsSettings(), service_factory=LocalService)
    assert await backend.health() == "ok"
    assert backend.capabilities.device_qubits == 5
    task = Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=200, seed=11, backend="ibm")
    job_id = await backend.submit(task)
    status = await _until_ended(backend, job_id, within_s=60)
    assert status.state is RemoteState.DONE
    assert status.counts is not None
    assert sum(status.counts.values()) == 200
    # A noisy Bell: mostly correlated outcomes.
    assert status.counts.get("00", 0) + status.counts.get("11", 0) > 150
    assert status.memory is not None
    assert len(status.memory) == 200
    await backend.close()


async def test_the_worker_submits_and_the_poller_completes_an_ibm_task() -> None:
    # The poller's clock jumps 400 s a pass, and the job once took over 216 passes (86,400 s,
    # the default timeout) on a loaded machine.
    settings = IbmBackendSettings(
        type="ibm", device="fake_manila", poll_interval_s=0.1, remote_timeout_s=1e9
    )
    backend = IbmRemoteBackend("ibm", settings, LimitsSettings(), service_factory=LocalService)
    store = InMemoryTaskStore()
    jobs = InMemoryRemoteJobs(store)
    task = await store.create(
        Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=100, backend="ibm")
    )
    await store.fetch(1, timeout=0)
    now = [time.time()]
    job = await RemoteSubmitter({"ibm": backend}, jobs, clock=lambda: now[0]).submit(task)
    assert job.job_id
    poller = RemotePoller(store, jobs, {"ibm": backend}, clock=lambda: now[0])
    deadline = time.monotonic() + 120
    while store.tasks[task.id].status is not Status.COMPLETED and time.monotonic() < deadline:
        now[0] += 400  # every pass finds the job due
        await poller.run_once()
        await asyncio.sleep(0.1)
    done = store.tasks[task.id]
    assert done.status is Status.COMPLETED
    assert done.result is not None
    assert sum(done.result.values()) == 100
    assert jobs.jobs == {}
    await backend.close()


@pytest.mark.skipif(
    not os.environ.get("QISKIT_IBM_TOKEN"),
    reason="needs an IBM Quantum account: QISKIT_IBM_TOKEN (and QTASK_TEST_IBM_DEVICE) unset",
)
async def test_a_real_account_reaches_the_device_and_takes_a_job() -> None:
    settings = IbmBackendSettings(
        type="ibm",
        device=os.environ.get("QTASK_TEST_IBM_DEVICE", "ibm_brisbane"),
        instance=os.environ.get("QISKIT_IBM_INSTANCE"),
    )
    backend = IbmRemoteBackend("ibm", settings, LimitsSettings())
    assert await backend.health() == "ok"
    task = Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=100, backend="ibm")
    job_id = await backend.submit(task)
    status = (await backend.statuses([job_id]))[job_id]
    assert status.state in {RemoteState.QUEUED, RemoteState.RUNNING, RemoteState.DONE}
    await backend.cancel(job_id)  # do not spend the account's time on a test
    await backend.close()


def test_qtask_serve_runs_an_ibm_task_in_local_testing_mode_through_its_provider_child(
    tmp_path: Path,
) -> None:
    env = {
        "QTASK_BACKENDS__IBM_LOCAL__TYPE": "ibm",
        "QTASK_BACKENDS__IBM_LOCAL__CHANNEL": "local",
        "QTASK_BACKENDS__IBM_LOCAL__DEVICE": "fake_manila",
        "QTASK_BACKENDS__IBM_LOCAL__POLL_INTERVAL_S": "0.2",
    }
    server = ServerProcess(tmp_path / "data", workers=1, env=env)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            by_name = {b["name"]: b for b in client.get("/backends").json()["backends"]}
            assert by_name["ibm_local"]["health"] == "ok"
            assert by_name["ibm_local"]["num_qubits"] == 5
            body = wait_done(client, submit(client, BELL, backend="ibm_local", shots=300), 120)
        assert body["status"] == "completed", body
        assert sum(body["result"].values()) == 300
        assert body["result"].get("00", 0) + body["result"].get("11", 0) > 240
    finally:
        assert server.terminate() == 0
