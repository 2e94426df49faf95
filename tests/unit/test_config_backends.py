"""[backends.<name>] settings: the built-in backends, the TOML and environment forms, and
start-up errors that name the setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qtask.config import load_settings
from qtask.config_backends import AerDeviceBackendSettings, QtaskBackendSettings
from qtask.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("QTASK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qtask.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_configuration_offers_aer_by_default_and_three_noisy_devices() -> None:
    settings = load_settings()
    assert settings.default_backend == "aer"
    table = settings.backend_table
    assert sorted(table) == ["aer", "fake_brisbane", "fake_fez", "fake_torino"]
    assert table["fake_brisbane"] == AerDeviceBackendSettings(
        type="aer_device", device="fake_brisbane"
    )


def test_toml_adds_a_device_turns_one_off_and_sets_the_default(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'default_backend = "kingston"\n'
        '[backends.kingston]\ntype = "aer_device"\ndevice = "fake_kingston"\n'
        '[backends.fake_fez]\ntype = "off"\n',
    )
    settings = load_settings(path)
    assert settings.default_backend == "kingston"
    assert sorted(settings.backend_table) == ["aer", "fake_brisbane", "fake_torino", "kingston"]


def test_environment_form_adds_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTASK_BACKENDS__SHERBROOKE__TYPE", "aer_device")
    monkeypatch.setenv("QTASK_BACKENDS__SHERBROOKE__DEVICE", "fake_sherbrooke")
    table = load_settings().backend_table
    assert table["sherbrooke"] == AerDeviceBackendSettings(
        type="aer_device", device="fake_sherbrooke"
    )


def test_unknown_type_fails_naming_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTASK_BACKENDS__MINE__TYPE", "quantinuum")
    with pytest.raises(
        ConfigError, match=r"backends\.mine \(env QTASK_BACKENDS__MINE\).*'quantinuum'"
    ):
        load_settings()


def test_malformed_device_fails_naming_the_setting(tmp_path: Path) -> None:
    path = toml(tmp_path, '[backends.mine]\ntype = "aer_device"\ndevice = "brisbane"\n')
    with pytest.raises(ConfigError, match=r"backends\.mine\.device \(env QTASK_BACKENDS__MINE__DE"):
        load_settings(path)


def test_device_option_on_aer_fails_naming_the_setting(tmp_path: Path) -> None:
    path = toml(tmp_path, '[backends.mine]\ntype = "aer"\ndevice = "fake_fez"\n')
    with pytest.raises(ConfigError, match=r"backends\.mine\.device"):
        load_settings(path)


def test_unknown_default_backend_fails_naming_the_setting_and_the_known(tmp_path: Path) -> None:
    path = toml(tmp_path, 'default_backend = "fake_fez"\n[backends.fake_fez]\ntype = "off"\n')
    with pytest.raises(
        ConfigError,
        match=r"default_backend \(env QTASK_DEFAULT_BACKEND\).*'fake_fez' is not a configured "
        r"backend; known: aer, fake_brisbane, fake_torino",
    ):
        load_settings(path)


def test_backend_name_that_is_not_lower_case_fails(tmp_path: Path) -> None:
    path = toml(tmp_path, '[backends.My-Device]\ntype = "aer"\n')
    with pytest.raises(ConfigError, match=r"backends\.My-Device"):
        load_settings(path)


def test_qtask_remote_backend_reads_its_options_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(
        toml(
            tmp_path,
            '[backends.remote]\ntype = "qtask"\nurl = "https://b.example"\napi_key_env = "B_KEY"\n',
        )
    )
    table = settings.backend_table["remote"]
    assert table == QtaskBackendSettings(
        type="qtask",
        url="https://b.example",
        api_key_env="B_KEY",
        remote_timeout_s=86400.0,
        poll_interval_s=2.0,
    )


def test_qtask_remote_backend_without_a_url_fails_start_up_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"backends\.remote\.url"):
        load_settings(toml(tmp_path, '[backends.remote]\ntype = "qtask"\nurl = "ftp://b"\n'))
