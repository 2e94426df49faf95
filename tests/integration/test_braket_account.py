"""The `braket` backend against a real AWS account, only when its variables are set:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN, AWS_REGION as needed),
QTASK_TEST_BRAKET_DEVICE_ARN (e.g. SV1's) and QTASK_TEST_BRAKET_S3_BUCKET. It creates one small
quantum task (100 shots; SV1 bills per minute of simulation), re-submits it with the same client
token, and polls it to its end."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from qtask.config import LimitsSettings
from qtask.config_backends import BraketBackendSettings
from qtask.domain.remote import RemoteState
from qtask.domain.task import Task, new_task_id
from qtask.execution.remote_braket import BraketRemoteBackend, split_job_id
from qtask_testkit import BELL, BELL_INFO

NEEDED = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "QTASK_TEST_BRAKET_DEVICE_ARN",
    "QTASK_TEST_BRAKET_S3_BUCKET",
)
MISSING = [name for name in NEEDED if not os.environ.get(name)]


@pytest.mark.skipif(
    bool(MISSING), reason=f"needs an AWS account with Braket: {', '.join(MISSING)} unset"
)
async def test_a_real_device_takes_one_task_once_and_completes_it() -> None:
    settings = BraketBackendSettings(
        type="braket",
        device_arn=os.environ["QTASK_TEST_BRAKET_DEVICE_ARN"],
        s3_bucket=os.environ["QTASK_TEST_BRAKET_S3_BUCKET"],
        s3_prefix="qtask-test",
    )
    backend = BraketRemoteBackend("braket", settings, LimitsSettings())
    try:
        assert await backend.health() == "ok"
        task = Task(id=new_task_id(), source=BELL, info=BELL_INFO, shots=100, backend="braket")
        job_id = await backend.submit(task)
        assert await backend.submit(task) == job_id  # the client token: no second task
        deadline = time.monotonic() + 600
        while True:
            status = (await backend.statuses([job_id])).get(job_id)
            if status is not None and status.state.ended:
                break
            if time.monotonic() > deadline:
                await backend.cancel(job_id)
                pytest.fail(f"{split_job_id(job_id)[0]} unfinished after 600 s (cancelled)")
            await asyncio.sleep(5)
        assert status.state is RemoteState.DONE, status.message
        assert status.counts is not None
        assert set(status.counts) <= {"00", "01", "10", "11"}
        assert sum(status.counts.values()) == 100
    finally:
        await backend.close()
