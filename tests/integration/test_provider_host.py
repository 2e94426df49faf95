"""ChildHost with a real child process: calls run side by side in it, errors cross the pipe, a
child that dies fails its calls as unavailable and is started again; and an IBM submission in
local testing mode, made and polled by the worker's parts, leaves their process free of Qiskit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qtask.application.poller import RemotePoller
from qtask.config import LimitsSettings
from qtask.config_backends import BraketBackendSettings
from qtask.domain.task import Status, Task, new_task_id
from qtask.errors import RemoteRejectedError, RemoteUnavailableError
from qtask.execution.remote_braket import BraketRemoteBackend
from qtask.runtime.pool import ChildFailedError
from qtask.runtime.provider_host import ChildHost
from qtask.testing import InMemoryRemoteJobs, InMemoryTaskStore
from qtask.worker.remote import RemoteSubmitter
from qtask_testkit import BELL, BELL_INFO

HERE = Path(__file__).parent


@pytest.fixture
async def host(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ChildHost]:
    # The spawned child imports `provider_sessions` by name: put this directory on its path.
    monkeypatch.setenv("PYTHONPATH", f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(HERE))
    child = ChildHost("provider_sessions:EchoSession", ("hello",), threads=4)
    yield child
    await child.close()


async def test_calls_run_in_the_child_side_by_side(host: ChildHost) -> None:
    assert await host.call("hello", "qtask", timeout=30) == "hello, qtask"
    assert await host.call("pid", timeout=30) == host.pid != os.getpid()
    # Each meet() returns only once the other has arrived: both ran at once in the child.
    assert await asyncio.gather(host.call("meet", timeout=30), host.call("meet", timeout=30)) == [
        True,
        True,
    ]


async def test_errors_cross_the_pipe_and_the_child_stays_usable(host: ChildHost) -> None:
    with pytest.raises(RemoteRejectedError, match="device retired"):
        await host.call("refuse", "device retired", timeout=30)
    with pytest.raises(ChildFailedError, match="KeyError"):
        await host.call("break_down", timeout=30)
    assert await host.call("hello", "again", timeout=30) == "hello, again"


async def test_a_child_that_dies_fails_its_call_as_unavailable_and_is_started_again(
    host: ChildHost,
) -> None:
    first = await host.call("pid", timeout=30)
    with pytest.raises(RemoteUnavailableError, match="provider process stopped"):
        await host.call("die", timeout=30)
    second = await host.call("pid", timeout=30)
    assert second != first


def test_a_request_larger_than_the_pipe_goes_whole_under_uvloop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uvloop's add_reader leaves the pipe non-blocking: the first request after the child
    # started, if larger than the pipe's buffer, failed half-sent (EAGAIN) and took the child
    # down. `qtask worker`, `qtask poller` and `qtask serve` all run on uvloop.
    import uvloop

    monkeypatch.setenv("PYTHONPATH", f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(HERE))
    name = "q" * (1 << 20)

    async def scenario() -> None:
        child = ChildHost("provider_sessions:EchoSession", ("hello",), threads=4)
        try:
            for _ in range(2):
                assert await child.call("hello", name, timeout=60) == f"hello, {name}"
        finally:
            await child.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


IBM_SUBMIT_AND_POLL = """
import asyncio, json, sys, time
from qtask.config import Settings
from qtask.domain.task import Status, Task, new_task_id
from qtask.execution.catalog import build_catalog
from qtask.application.poller import RemotePoller
from qtask.testing import InMemoryRemoteJobs, InMemoryTaskStore
from qtask.worker.remote import RemoteSubmitter
from qtask_testkit import BELL, BELL_INFO

async def main():
    settings = Settings.model_validate({"backends": {"ibm_local": {
        "type": "ibm", "channel": "local", "device": "fake_manila", "poll_interval_s": 0.1}}})
    remotes = build_catalog(settings).remotes()
    store = InMemoryTaskStore()
    jobs = InMemoryRemoteJobs(store)
    task = await store.create(
        Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=100, backend="ibm_local"))
    await store.fetch(1, timeout=0)
    await RemoteSubmitter(remotes, jobs).submit(task)
    poller = RemotePoller(store, jobs, remotes)
    deadline = time.monotonic() + 120
    while store.tasks[task.id].status is not Status.COMPLETED and time.monotonic() < deadline:
        await poller.run_once()
        await asyncio.sleep(0.2)
    done = store.tasks[task.id]
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                    {"qiskit", "qiskit_aer", "qiskit_ibm_runtime"})
    print(json.dumps({"status": done.status.value, "shots": sum((done.result or {}).values()),
                      "loaded": loaded[:5]}))
    for backend in remotes.values():
        await backend.close()

asyncio.run(main())
"""


def test_an_ibm_submission_leaves_the_workers_process_free_of_qiskit() -> None:
    # A fresh interpreter: the test process itself has imported Qiskit long ago.
    tests = HERE.parent
    path = os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", IBM_SUBMIT_AND_POLL],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": path},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"status": "completed", "shots": 100, "loaded": []}


async def test_a_braket_task_goes_through_the_provider_child_and_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    settings = BraketBackendSettings(
        type="braket",
        device_arn="arn:aws:braket:::device/quantum-simulator/amazon/sv1",
        s3_bucket="results",
        poll_interval_s=0.1,
    )
    backend = BraketRemoteBackend(
        "sv1", settings, LimitsSettings(), clients_path="provider_sessions:fake_braket_clients"
    )
    store = InMemoryTaskStore()
    jobs = InMemoryRemoteJobs(store)
    task = await store.create(
        Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=5, backend="sv1")
    )
    await store.fetch(1, timeout=0)
    now = [time.time()]
    job = await RemoteSubmitter({"sv1": backend}, jobs, clock=lambda: now[0]).submit(task)
    assert job.job_id.startswith(f"arn:aws:braket:us-east-1:123456789012:quantum-task/{task.id}")
    now[0] += 60
    await RemotePoller(store, jobs, {"sv1": backend}, clock=lambda: now[0]).run_once()
    done = store.tasks[task.id]
    assert (done.status, done.result) == (Status.COMPLETED, {"11": 5})
    await backend.close()
