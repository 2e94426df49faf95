"""`qtask serve` holds its data directory: a second one on it is refused, naming the holder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qtask.assembly.embedded import lock_data_dir
from qtask.errors import ConfigError


def test_a_second_serve_on_one_data_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path / "data")
    try:
        with pytest.raises(ConfigError, match=rf"in use by qtask serve \(pid {os.getpid()}\)"):
            lock_data_dir(tmp_path / "data")
    finally:
        held.close()
    lock_data_dir(tmp_path / "data").close()  # free again once the holder let go
