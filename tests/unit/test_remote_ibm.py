"""The `ibm` remote backend's status mapping, error paths and cancel, against a fake of
qiskit-ibm-runtime's service object (no network, no Qiskit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from qtask.config import LimitsSettings, Settings
from qtask.config_backends import IbmBackendSettings
from qtask.domain.remote import RemoteState
from qtask.domain.task import Task, new_task_id
from qtask.errors import RemoteRejectedError, RemoteUnavailableError
from qtask.execution.catalog import build_catalog
from qtask.execution.remote_ibm import IbmRemoteBackend
from qtask_testkit import BELL, BELL_INFO


class Bits:
    def __init__(self, shots: list[str]) -> None:
        self._shots = shots

    def get_bitstrings(self) -> list[str]:
        return list(self._shots)


@dataclass
class PubResult:
    data: dict[str, Bits]


@dataclass
class Job:
    state: Any
    registers: dict[str, Bits] = field(default_factory=dict)
    error: str = ""
    cancelled: bool = False

    def status(self) -> Any:
        return self.state

    def result(self) -> list[PubResult]:
        return [PubResult(self.registers)]

    def error_message(self) -> str:
        return self.error

    def cancel(self) -> None:
        self.cancelled = True


class Service:
    def __init__(self, jobs: dict[str, Job]) -> None:
        self.jobs = jobs

    def backend(self, name: str) -> object:
        return object()

    def job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise ConnectionError(f"no answer for {job_id}")
        return self.jobs[job_id]


def ibm(jobs: dict[str, Job]) -> IbmRemoteBackend:
    settings = IbmBackendSettings(type="ibm", device="ibm_brisbane")
    return IbmRemoteBackend(
        "ibm", settings, LimitsSettings(), service_factory=lambda: Service(jobs)
    )


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("INITIALIZING", RemoteState.QUEUED),
        ("QUEUED", RemoteState.QUEUED),
        ("RUNNING", RemoteState.RUNNING),
        ("SOMETHING_NEW", RemoteState.RUNNING),
    ],
)
async def test_unfinished_states_map_without_outcome(raw: str, state: RemoteState) -> None:
    answers = await ibm({"j": Job(raw)}).statuses(["j"])
    assert answers["j"].state is state
    assert answers["j"].counts is None


async def test_done_reads_counts_and_memory_from_the_classical_registers() -> None:
    bell = Job("DONE", {"meas": Bits(["00", "11", "11", "00", "11"])})
    [status] = (await ibm({"j": bell}).statuses(["j"])).values()
    assert status.state is RemoteState.DONE
    assert status.counts == {"00": 2, "11": 3}
    assert status.memory == ["00", "11", "11", "00", "11"]


async def test_done_with_two_registers_keys_them_as_aer_does_last_leftmost_spaced() -> None:
    job = Job("DONE", {"a": Bits(["0", "1"]), "b": Bits(["1", "1"])})
    [status] = (await ibm({"j": job}).statuses(["j"])).values()
    assert status.counts == {"1 0": 1, "1 1": 1}


async def test_error_carries_the_providers_message_and_cancelled_ends_cancelled() -> None:
    jobs = {"e": Job("ERROR", error="Error code 1517; qubit out of range"), "c": Job("CANCELLED")}
    answers = await ibm(jobs).statuses(["e", "c"])
    assert answers["e"].state is RemoteState.ERROR
    assert answers["e"].message == "IBM Quantum: Error code 1517; qubit out of range"
    assert answers["c"].state is RemoteState.CANCELLED


async def test_local_mode_enum_statuses_are_read_by_name() -> None:
    class JobStatus:
        name = "DONE"

    [status] = (await ibm({"j": Job(JobStatus(), {"c": Bits(["1"])})}).statuses(["j"])).values()
    assert status.state is RemoteState.DONE


async def test_a_job_that_cannot_be_read_is_left_out_and_all_failing_is_unavailable() -> None:
    backend = ibm({"ok": Job("QUEUED")})
    answers = await backend.statuses(["ok", "lost"])
    assert set(answers) == {"ok"}
    with pytest.raises(RemoteUnavailableError, match="no answer for lost"):
        await backend.statuses(["lost"])


async def test_statuses_are_polled_per_job_with_bounded_concurrency() -> None:
    jobs = {str(i): Job("RUNNING") for i in range(40)}
    backend = ibm(jobs)
    answers = await backend.statuses(list(jobs))
    assert len(answers) == 40
    assert backend.status_batch >= 1


async def test_cancel_cancels_the_job() -> None:
    job = Job("RUNNING")
    await ibm({"j": job}).cancel("j")
    assert job.cancelled


async def test_missing_token_is_a_health_answer_and_a_final_submit_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IBM_TOKEN_FOR_TEST", raising=False)
    settings = IbmBackendSettings(type="ibm", device="ibm_brisbane", token_env="IBM_TOKEN_FOR_TEST")
    backend = IbmRemoteBackend("ibm", settings, LimitsSettings())
    assert "IBM_TOKEN_FOR_TEST is not set" in await backend.health()
    task = Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=10, backend="ibm")
    with pytest.raises(RemoteRejectedError, match="IBM_TOKEN_FOR_TEST"):
        await backend.submit(task)


def test_an_ibm_table_builds_a_remote_backend_without_credentials() -> None:
    settings = Settings.model_validate(
        {"backends": {"quantum": {"type": "ibm", "device": "ibm_brisbane"}}}
    )
    catalog = build_catalog(settings)
    [remote] = [b for name, b in catalog.remotes().items() if name == "quantum"]
    assert remote.capabilities.kind == "remote"
    assert remote.capabilities.type == "ibm"
    table = settings.backend_table["quantum"]
    assert isinstance(table, IbmBackendSettings)
    assert (table.token_env, table.channel) == ("QISKIT_IBM_TOKEN", "ibm_quantum_platform")


class Unreachable(Service):
    def __init__(self, error: Exception) -> None:
        super().__init__({})
        self.error = error

    def backend(self, name: str) -> object:
        raise self.error


async def test_submit_retries_network_trouble_and_gives_up_on_other_refusals() -> None:
    settings = IbmBackendSettings(type="ibm", device="ibm_nowhere")
    task = Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=10, backend="ibm")
    offline = IbmRemoteBackend(
        "ibm", settings, LimitsSettings(), service_factory=lambda: Unreachable(ConnectionError())
    )
    with pytest.raises(RemoteUnavailableError, match="could not reach the device"):
        await offline.submit(task)
    unknown = IbmRemoteBackend(
        "ibm",
        settings,
        LimitsSettings(),
        service_factory=lambda: Unreachable(ValueError("no backend ibm_nowhere")),
    )
    with pytest.raises(RemoteRejectedError, match="no backend ibm_nowhere"):
        await unknown.submit(task)
    assert "no backend ibm_nowhere" in await unknown.health()
