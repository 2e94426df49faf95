"""The object store's key layout (qtask.domain.object_keys): the pending and completed areas of
the bucket, sharded keys, the previous layout's keys still found, unsafe ids refused."""

from __future__ import annotations

import pytest

from qtask.domain.object_keys import (
    circuit_key,
    pending_keys,
    program_key,
    remote_job_key,
    result_key,
    result_keys,
)


def test_key_helpers_lay_out_keys() -> None:
    task_id = "0b7e5a52-3c1d-4e8f-9a0b-1c2d3e4f5a6b"
    assert circuit_key(task_id) == f"pending/0b/{task_id}.qasm"
    assert remote_job_key(task_id) == f"pending/0b/{task_id}.job.json"
    assert result_key(task_id) == f"completed/0b/{task_id}.json"
    assert program_key(task_id) == f"programs/0b/{task_id}.qpy"
    # Read back for a result known only by its id: also where versions before the pending
    # and completed areas wrote it.
    assert result_keys(task_id) == (result_key(task_id), f"results/0b/{task_id}.json")
    assert pending_keys(task_id) == (circuit_key(task_id), remote_job_key(task_id))


@pytest.mark.parametrize(
    "task_id", ["", "a/b", "/", "..", "a..b", "../etc", "a\\b", "a b", "a\nb", "x" * 201]
)
def test_key_helpers_reject_bad_ids(task_id: str) -> None:
    for helper in (circuit_key, result_key, program_key, remote_job_key):
        with pytest.raises(ValueError, match="invalid task id"):
            helper(task_id)
