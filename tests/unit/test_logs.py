"""qtask.logs: JSON lines as json.dumps writes them, from structlog and the stdlib."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from qtask import logs


@pytest.fixture
def stdout(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    qiskit_level = logging.getLogger("qiskit").level
    logs.configure("INFO", json_output=True)
    yield out
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("qiskit").setLevel(qiskit_level)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_structlog_lines_are_one_json_object_each(stdout: io.StringIO) -> None:
    log = logs.get_logger("test")
    log.info("first", n=1, nested={"a": [1, 2]}, text="é\n")
    log.info("second", big=2**70, other=object)  # past 64 bits, and no JSON type
    # json.dumps's separators: tests and operators grep for '"event": "..."'.
    assert stdout.getvalue().startswith('{"component": "test", ')
    first, second = _lines(stdout)
    assert {k: first[k] for k in ("event", "component", "n", "nested", "text", "level")} == {
        "event": "first",
        "component": "test",
        "n": 1,
        "nested": {"a": [1, 2]},
        "text": "é\n",
        "level": "info",
    }
    assert second["big"] == 2**70
    assert second["other"] == repr(object)


def test_stdlib_lines_are_json_too(stdout: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").warning("started %s", "ok")
    (line,) = _lines(stdout)
    assert (line["event"], line["level"], line["logger"]) == (
        "started ok",
        "warning",
        "uvicorn.error",
    )


def test_qiskits_per_pass_info_lines_are_left_out_and_its_warnings_kept(
    stdout: io.StringIO,
) -> None:
    passes = logging.getLogger("qiskit.passmanager.base_tasks")
    passes.info("Pass: BasisTranslator - 0.04 (ms)")
    passes.warning("something worth a warning")
    logging.getLogger("qtask.other").info("kept")
    assert [line["event"] for line in _lines(stdout)] == ["something worth a warning", "kept"]
