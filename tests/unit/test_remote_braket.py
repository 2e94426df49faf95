"""The `braket` remote backend against fakes of the boto3 Braket and S3 clients (no network):
every AwsQuantumTask state's mapping, failureReason, the client token that makes a re-submission
idempotent, results read as Aer keys them, cancel, and which errors are retried."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import uuid
from typing import Any

import pytest

from qtask.config import LimitsSettings, Settings
from qtask.config_backends import BraketBackendSettings
from qtask.domain.backends import BackendKind
from qtask.domain.remote import PROVIDER_STATES, RemoteState
from qtask.domain.task import Task, new_task_id
from qtask.errors import ConfigError, RemoteRejectedError, RemoteUnavailableError
from qtask.execution.braket_circuits import Readback
from qtask.execution.catalog import build_catalog
from qtask.execution.remote_braket import (
    BraketClients,
    BraketRemoteBackend,
    job_id_of,
    split_job_id,
)
from qtask_testkit import BELL, BELL_INFO

DEVICE = "arn:aws:braket:::device/quantum-simulator/amazon/sv1"
BELL_READBACK = Readback((0, 1), (2,))


class ClientError(Exception):
    """What botocore's ClientError carries: response["Error"] with Code and Message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.response = {"Error": {"Code": code, "Message": message}}


class FakeBraket:
    """CreateQuantumTask honours clientToken as Braket does: the same token, the same task."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.by_token: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.fail_with: Exception | None = None
        self.device_reads = 0

    def create_quantum_task(self, **request: Any) -> dict[str, str]:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        arn = self.by_token.get(request["clientToken"])
        if arn is None:
            arn = f"arn:aws:braket:us-east-1:123456789012:quantum-task/{uuid.uuid4()}"
            self.by_token[request["clientToken"]] = arn
            self.tasks[arn] = {
                "quantumTaskArn": arn,
                "status": "CREATED",
                "outputS3Bucket": request["outputS3Bucket"],
                "outputS3Directory": f"{request['outputS3KeyPrefix']}/{arn.rsplit('/', 1)[1]}",
            }
        return {"quantumTaskArn": arn}

    def get_quantum_task(self, quantumTaskArn: str) -> dict[str, Any]:  # noqa: N803 - boto3's
        if quantumTaskArn not in self.tasks:
            raise ClientError("ResourceNotFoundException", f"no task {quantumTaskArn}")
        return dict(self.tasks[quantumTaskArn])

    def cancel_quantum_task(self, quantumTaskArn: str, clientToken: str) -> dict[str, str]:  # noqa: N803
        self.cancelled.append(quantumTaskArn)
        self.tasks[quantumTaskArn]["status"] = "CANCELLING"
        return {"cancellationStatus": "CANCELLING"}

    def get_device(self, deviceArn: str) -> dict[str, Any]:  # noqa: N803
        self.device_reads += 1
        capabilities = {"paradigm": {"qubitCount": 34}, "service": {"shotsRange": [0, 100000]}}
        return {"deviceStatus": "ONLINE", "deviceCapabilities": json.dumps(capabilities)}


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto3's
        if (Bucket, Key) not in self.objects:
            raise ClientError("NoSuchKey", f"{Key} not found")
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}


@pytest.fixture
def aws() -> BraketClients:
    return BraketClients(braket=FakeBraket(), s3=FakeS3())


def braket(aws: BraketClients) -> BraketRemoteBackend:
    settings = BraketBackendSettings(type="braket", device_arn=DEVICE, s3_bucket="results")
    return BraketRemoteBackend("braket", settings, LimitsSettings(), clients=lambda: aws)


def bell_task() -> Task:
    return Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=4, backend="braket")


def finish(aws: BraketClients, job_id: str, document: dict[str, Any]) -> None:
    """Mark the task COMPLETED and put its results.json where Braket writes it."""
    arn, _ = split_job_id(job_id)
    task = aws.braket.tasks[arn]
    task["status"] = "COMPLETED"
    key = f"{task['outputS3Directory']}/results.json"
    aws.s3.objects[(task["outputS3Bucket"], key)] = json.dumps(document).encode()


@pytest.mark.parametrize("raw", PROVIDER_STATES["braket"])
async def test_every_braket_state_maps_as_provider_states_says(
    aws: BraketClients, raw: str
) -> None:
    backend = braket(aws)
    arn = "arn:aws:braket:us-east-1:123456789012:quantum-task/t"
    aws.braket.tasks[arn] = {"status": raw, "failureReason": "why", "outputS3Bucket": "b"}
    if raw == "COMPLETED":
        finish_doc = {"measuredQubits": [0, 1], "measurements": [[1, 1]]}
        aws.braket.tasks[arn]["outputS3Directory"] = "qtask/t"
        aws.s3.objects[("b", "qtask/t/results.json")] = json.dumps(finish_doc).encode()
    job_id = job_id_of(arn, BELL_READBACK)
    status = (await backend.statuses([job_id]))[job_id]
    assert status.state is PROVIDER_STATES["braket"][raw]
    assert status.state.ended == (raw in {"COMPLETED", "FAILED", "CANCELLED"})


async def test_created_and_cancelling_are_not_ended() -> None:
    states = PROVIDER_STATES["braket"]
    assert states["CREATED"] is RemoteState.QUEUED
    assert states["CANCELLING"] is RemoteState.RUNNING


async def test_a_failed_task_carries_braket_s_failure_reason(aws: BraketClients) -> None:
    backend = braket(aws)
    job_id = await backend.submit(bell_task())
    arn, _ = split_job_id(job_id)
    aws.braket.tasks[arn].update(status="FAILED", failureReason="Device ran out of budget")
    status = (await backend.statuses([job_id]))[job_id]
    assert status.state is RemoteState.ERROR
    assert status.message == "Amazon Braket: Device ran out of budget"


async def test_resubmitting_a_task_sends_its_id_as_client_token_and_makes_no_second_task(
    aws: BraketClients,
) -> None:
    backend = braket(aws)
    task = bell_task()
    first = await backend.submit(task)
    again = await backend.submit(task)  # a redelivery after a crash before the job was stored
    assert first == again
    assert len(aws.braket.tasks) == 1
    assert [r["clientToken"] for r in aws.braket.requests] == [task.id, task.id]
    request = aws.braket.requests[0]
    assert (request["deviceArn"], request["shots"]) == (DEVICE, 4)
    assert (request["outputS3Bucket"], request["outputS3KeyPrefix"]) == ("results", "qtask")
    program = json.loads(request["action"])
    assert program["braketSchemaHeader"]["name"] == "braket.ir.openqasm.program"
    assert "cnot q[0], q[1];" in program["source"]


async def test_a_completed_task_reads_results_json_as_aer_keys_its_counts(
    aws: BraketClients,
) -> None:
    backend = braket(aws)
    # Two registers: c (q0, q1) and d (q2); Aer keys them "d c", each bit 0 rightmost.
    source = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[2] c;\nbit[1] d;\n'
        "x q[0];\nh q[2];\nc[0] = measure q[0];\nc[1] = measure q[1];\nd[0] = measure q[2];\n"
    )
    info = dataclasses.replace(BELL_INFO, num_qubits=3, num_clbits=3)
    task = Task(id=new_task_id(), source=source, info=info, shots=3, backend="braket")
    job_id = await backend.submit(task)
    rows = [[1, 0, 0], [1, 0, 1], [1, 0, 1]]
    finish(aws, job_id, {"measuredQubits": [0, 1, 2], "measurements": rows})
    status = (await backend.statuses([job_id]))[job_id]
    assert status.state is RemoteState.DONE
    assert status.counts == {"0 01": 1, "1 01": 2}
    assert status.memory == ["0 01", "1 01", "1 01"]


async def test_a_result_not_yet_in_s3_is_left_out_to_be_read_again(aws: BraketClients) -> None:
    backend = braket(aws)
    job_id = await backend.submit(bell_task())
    aws.braket.tasks[split_job_id(job_id)[0]]["status"] = "COMPLETED"  # no results.json yet
    with pytest.raises(RemoteUnavailableError, match="NoSuchKey"):
        await backend.statuses([job_id])
    finish(aws, job_id, {"measuredQubits": [0, 1], "measurements": [[1, 1], [0, 0]]})
    status = (await backend.statuses([job_id]))[job_id]
    assert status.counts == {"11": 1, "00": 1}


async def test_cancel_cancels_the_task_by_its_arn(aws: BraketClients) -> None:
    backend = braket(aws)
    job_id = await backend.submit(bell_task())
    await backend.cancel(job_id)
    arn, _ = split_job_id(job_id)
    assert aws.braket.cancelled == [arn]
    status = (await backend.statuses([job_id]))[job_id]
    assert status.state is RemoteState.RUNNING  # CANCELLING until Braket says CANCELLED


async def test_throttling_is_retried_and_validation_is_final(aws: BraketClients) -> None:
    backend = braket(aws)
    aws.braket.fail_with = ClientError("ThrottlingException", "Rate exceeded")
    with pytest.raises(RemoteUnavailableError, match="ThrottlingException: Rate exceeded"):
        await backend.submit(bell_task())
    aws.braket.fail_with = ClientError("ValidationException", "qubit count exceeds 34")
    with pytest.raises(RemoteRejectedError, match="qubit count exceeds 34"):
        await backend.submit(bell_task())


async def test_one_unreadable_task_is_left_out_and_all_unreadable_is_unavailable(
    aws: BraketClients,
) -> None:
    backend = braket(aws)
    known = await backend.submit(bell_task())
    lost = job_id_of("arn:aws:braket:us-east-1:123456789012:quantum-task/gone", BELL_READBACK)
    assert set(await backend.statuses([known, lost])) == {known}
    with pytest.raises(RemoteUnavailableError, match="ResourceNotFoundException"):
        await backend.statuses([lost])


async def test_health_reads_the_device_s_qubits_and_shot_limit_once_a_minute(
    aws: BraketClients,
) -> None:
    backend = braket(aws)
    assert await backend.health() == "ok"
    assert await backend.health() == "ok"
    assert aws.braket.device_reads == 1
    assert backend.capabilities.device_qubits == 34
    assert backend.capabilities.max_qubits == {"device": min(34, LimitsSettings().max_qubits)}


async def test_without_aws_credentials_health_says_so_and_submit_fails_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    settings = BraketBackendSettings(type="braket", device_arn=DEVICE, s3_bucket="results")
    backend = BraketRemoteBackend("braket", settings, LimitsSettings())
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set" in await backend.health()
    with pytest.raises(RemoteRejectedError, match="no AWS credentials"):
        await backend.submit(bell_task())


def test_a_job_id_keeps_the_arn_and_the_readback() -> None:
    arn = "arn:aws:braket:us-east-1:123456789012:quantum-task/abc"
    readback = Readback((2, None, 0), (1, 2))
    assert split_job_id(job_id_of(arn, readback)) == (arn, readback)


def test_braket_tables_build_a_remote_and_a_local_backend() -> None:
    settings = Settings.model_validate(
        {
            "backends": {
                "sv1": {"type": "braket", "device_arn": DEVICE, "s3_bucket": "results"},
                "braket_local": {"type": "braket_local"},
            }
        }
    )
    catalog = build_catalog(settings)
    assert set(catalog.remotes()) == {"sv1"}
    local = catalog.get("braket_local").capabilities
    assert (local.kind, local.type, local.seeds) == (BackendKind.LOCAL, "braket_local", False)
    assert catalog.devices()["braket_local"] == "braket_sv"


def test_a_braket_table_without_the_sdk_fails_start_up_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "braket" else real(name, *a)
    )
    settings = Settings.model_validate({"backends": {"sim": {"type": "braket_local"}}})
    with pytest.raises(ConfigError, match=r"backends\.sim\.type .*qtask\[braket\]"):
        build_catalog(settings)
