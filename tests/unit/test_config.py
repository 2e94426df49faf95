"""Settings: defaults, QTASK_* environment variables, the TOML file and their precedence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qtask.config import Settings, load_settings
from qtask.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No QTASK_* variable from the outside world leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("QTASK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.storage.data_dir == Path("qtask-data")
    assert settings.worker.processes == max(1, os.cpu_count() or 1)
    assert settings.worker.threads_per_process == 0
    assert settings.worker.max_attempts == 3
    assert settings.worker.task_timeout_s == 600.0
    assert settings.worker.batch_size == 64
    assert settings.worker.shutdown_grace_s == 30.0
    assert settings.limits.max_body_bytes == 1 << 20
    assert settings.limits.max_circuit_bytes == 512 << 10
    assert settings.limits.max_qubits == 100
    assert settings.limits.max_operations == 100_000
    assert settings.limits.max_shots == 1_000_000
    assert settings.limits.max_statevector_mb == 4096
    assert settings.log.level == "INFO"
    assert settings.log.json_output is None


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.server = settings.server  # type: ignore[misc]


def test_env_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTASK_SERVER__PORT", "9000")
    monkeypatch.setenv("QTASK_LOG__LEVEL", "DEBUG")
    monkeypatch.setenv("QTASK_STORAGE__DATA_DIR", "/var/lib/qtask")
    settings = load_settings()
    assert settings.server.port == 9000
    assert settings.log.level == "DEBUG"
    assert settings.storage.data_dir == Path("/var/lib/qtask")
    assert settings.server.host == "127.0.0.1"  # untouched siblings keep their defaults


def test_keyword_overrides() -> None:
    settings = load_settings(server={"port": 1234})
    assert settings.server.port == 1234


def test_toml_file_via_argument(tmp_path: Path) -> None:
    path = write(tmp_path / "qtask.toml", "[server]\nport = 9100\n\n[worker]\nprocesses = 3\n")
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.worker.processes == 3
    assert settings.worker.max_attempts == 3  # defaults still fill the rest


def test_toml_file_via_qtask_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "qtask.toml", "[server]\nport = 9100\n\n[worker]\nprocesses = 3\n")
    monkeypatch.setenv("QTASK_CONFIG", str(path))
    settings = load_settings()
    assert settings.server.port == 9100
    assert settings.worker.processes == 3


def test_argument_beats_qtask_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = write(tmp_path / "env.toml", "[server]\nport = 1111\n")
    given = write(tmp_path / "given.toml", "[server]\nport = 2222\n")
    monkeypatch.setenv("QTASK_CONFIG", str(from_env))
    assert load_settings(given).server.port == 2222


def test_env_beats_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "qtask.toml", "[server]\nport = 9100\n\n[worker]\nprocesses = 3\n")
    monkeypatch.setenv("QTASK_SERVER__PORT", "9000")
    settings = load_settings(path)
    assert settings.server.port == 9000
    assert settings.worker.processes == 3  # the file still supplies what env does not


def test_toml_is_not_read_without_a_path(tmp_path: Path) -> None:
    write(tmp_path / "qtask.toml", "[server]\nport = 9100\n")
    assert load_settings().server.port == 8000


def test_invalid_env_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTASK_WORKER__PROCESSES", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "worker.processes" in message
    assert "QTASK_WORKER__PROCESSES" in message


def test_non_numeric_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTASK_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"server\.port.*QTASK_SERVER__PORT"):
        load_settings()


def test_invalid_toml_value_names_the_setting(tmp_path: Path) -> None:
    path = write(tmp_path / "qtask.toml", "[limits]\nmax_qubits = 0\n")
    with pytest.raises(ConfigError, match=r"limits\.max_qubits"):
        load_settings(path)


def test_invalid_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTASK_LOG__LEVEL", "LOUD")
    with pytest.raises(ConfigError, match=r"log\.level"):
        load_settings()


def test_several_problems_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTASK_WORKER__PROCESSES", "0")
    monkeypatch.setenv("QTASK_SERVER__PORT", "70000")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "worker.processes" in str(info.value)
    assert "server.port" in str(info.value)


def test_unknown_section_in_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "qtask.toml", "[bogus]\nx = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_settings(path)


def test_unknown_top_level_key_in_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "qtask.toml", "port = 9100\n")
    with pytest.raises(ConfigError, match="port"):
        load_settings(path)


def test_unknown_key_in_toml_section_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "qtask.toml", "[server]\nportt = 9100\n")
    with pytest.raises(ConfigError, match="portt"):
        load_settings(path)


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path / "qtask.toml", "[server\nport = 1\n")
    with pytest.raises(ConfigError, match=r"config file .*qtask\.toml"):
        load_settings(path)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(missing)


def test_missing_config_file_via_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTASK_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings()


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(tmp_path)


def test_toml_path_does_not_leak_into_later_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "qtask.toml", "[server]\nport = 9100\n")
    assert load_settings(path).server.port == 9100
    assert load_settings().server.port == 8000


def test_aer_device_defaults_to_auto_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().worker.aer_device == "auto"
    monkeypatch.setenv("QTASK_WORKER__AER_DEVICE", "GPU")
    assert load_settings().worker.aer_device == "GPU"


def test_unknown_aer_device_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTASK_WORKER__AER_DEVICE", "TPU")
    with pytest.raises(ConfigError, match=r"worker\.aer_device.*QTASK_WORKER__AER_DEVICE"):
        load_settings()
