"""Handlers for the ChildPool tests; imported by name in the pool's child processes."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

_state: dict[str, Any] = {}


def echo(request: Any) -> Any:
    """Answer with the request itself."""
    return request


def pid(request: Any) -> int:
    """Answer with this child's process id, after sleeping `request` seconds if given."""
    if request:
        time.sleep(float(request))
    return os.getpid()


def crash(request: Any) -> None:
    """Die as a segfault or the OOM killer would: SIGKILL, no answer."""
    os.kill(os.getpid(), signal.SIGKILL)


def crash_on_die(request: Any) -> Any:
    """Crash with SIGKILL when asked to "die"; answer with the request otherwise."""
    if request == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return request


def hang(request: Any) -> None:
    """Never answer in time (a circuit far too slow to simulate)."""
    time.sleep(60)


def exit_now(code: int) -> None:
    """Leave without answering, with the given exit code."""
    os._exit(code)


def sleep(seconds: float) -> float:
    """Take `seconds` to answer."""
    time.sleep(seconds)
    return seconds


def raise_error(message: str) -> None:
    """Fail in the handler; the child itself stays fine."""
    raise ValueError(message)


def init(value: str) -> None:
    """Runs once when a child starts."""
    _state["value"] = value


def state(request: Any) -> Any:
    """Answer with what init stored."""
    return _state.get("value")
