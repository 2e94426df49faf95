"""The object store's key layout (qtask.domain.object_keys): sharded keys, unsafe ids refused."""

from __future__ import annotations

import pytest

from qtask.domain.object_keys import circuit_key, program_key, result_key


def test_key_helpers_lay_out_keys() -> None:
    task_id = "0b7e5a52-3c1d-4e8f-9a0b-1c2d3e4f5a6b"
    assert circuit_key(task_id) == f"circuits/0b/{task_id}.qasm"
    assert result_key(task_id) == f"results/0b/{task_id}.json"
    assert program_key(task_id) == f"programs/0b/{task_id}.qpy"


@pytest.mark.parametrize(
    "task_id", ["", "a/b", "/", "..", "a..b", "../etc", "a\\b", "a b", "a\nb", "x" * 201]
)
def test_key_helpers_reject_bad_ids(task_id: str) -> None:
    for helper in (circuit_key, result_key, program_key):
        with pytest.raises(ValueError, match="invalid task id"):
            helper(task_id)
