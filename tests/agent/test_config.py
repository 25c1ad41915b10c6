"""Agent settings: TOML plus environment overrides, and clear errors for bad ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet import shared
from edgefleet.agent import load_config
from edgefleet.shared.errors import ConfigError

KEY = shared.public_key_to_text(shared.generate_private_key().public_key())


def write(tmp_path: Path, **values: object) -> Path:
    base: dict[str, object] = {
        "device_id": "pi-1",
        "broker_url": "mqtt://127.0.0.1:1883",
        "artifact_base_url": "http://127.0.0.1:8080/artifacts",
        "trusted_keys": [KEY],
        "state_dir": str(tmp_path / "state"),
    }
    base.update(values)
    lines = []
    for k, v in base.items():
        if isinstance(v, list):
            lines.append(f"{k} = [" + ", ".join(f'"{i}"' for i in v) + "]")
        elif isinstance(v, int | float):
            lines.append(f"{k} = {v}")
        else:
            lines.append(f'{k} = "{v}"')
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_defaults_and_normalisation(tmp_path):
    config = load_config(write(tmp_path), env={})
    assert config.inference_host == "127.0.0.1"
    assert config.artifact_base_url.endswith("/")
    assert config.broker == ("127.0.0.1", 1883, False)
    assert len(config.keyring()) == 1


def test_credentials_move_out_of_the_url(tmp_path):
    config = load_config(write(tmp_path, broker_url="mqtts://pi:s%40cret@broker.local"), env={})
    assert config.broker_username == "pi"
    assert config.broker_password == "s@cret"
    assert config.broker_url == "mqtts://broker.local"
    assert config.broker == ("broker.local", 8883, True)
    assert "s@cret" not in repr(config)


def test_environment_overrides_the_file(tmp_path):
    env = {
        "EDGEFLEET_AGENT_INFERENCE_PORT": "9100",
        "EDGEFLEET_AGENT_PROFILE": "rpi5",
        "EDGEFLEET_AGENT_TRUSTED_KEYS": f"{KEY},{KEY}",
    }
    config = load_config(write(tmp_path), env=env)
    assert config.inference_port == 9100
    assert config.profile == "rpi5"
    assert config.trusted_keys == (KEY, KEY)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"device_id": "a/b"}, "invalid device id"),
        ({"broker_url": "http://x"}, "broker_url"),
        ({"artifact_base_url": "ftp://x"}, "artifact_base_url"),
        ({"trusted_keys": []}, "trusted_keys is empty"),
        ({"trusted_keys": ["not-a-key"]}, "trusted key"),
        ({"inference_port": 70000}, "inference_port"),
        ({"inference_port": "eighty"}, "inference_port"),
        ({"colour": "blue"}, "unknown setting"),
        ({"download_attempts": -1}, "download_attempts"),
        ({"download_retry_s": 90.0}, "download_retry_s"),  # above download_retry_max_s
        ({"download_retry_max_s": "inf"}, "download_retry_max_s"),
        ({"download_deadline_s": 0}, "download_deadline_s"),
        ({"download_deadline_s": "soon"}, "download_deadline_s"),
    ],
)
def test_bad_settings_are_named(tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, **values), env={})


def test_download_retries_last_until_expiry_unless_capped(tmp_path):
    config = load_config(write(tmp_path), env={})
    assert (config.download_attempts, config.download_deadline_s) == (None, None)
    assert (config.download_retry_s, config.download_retry_max_s) == (2.0, 60.0)
    # a config file from before keeps loading: its download_attempts is a cap
    assert load_config(write(tmp_path, download_attempts=5), env={}).download_attempts == 5
    assert load_config(write(tmp_path, download_attempts=0), env={}).download_attempts is None
    env = {
        "EDGEFLEET_AGENT_DOWNLOAD_DEADLINE_S": "600",
        "EDGEFLEET_AGENT_DOWNLOAD_ATTEMPTS": "",
    }
    config = load_config(write(tmp_path, download_attempts=5), env=env)
    assert (config.download_deadline_s, config.download_attempts) == (600.0, None)


def test_missing_settings_and_files(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    with pytest.raises(ConfigError, match="missing setting"):
        load_config(tmp_path / "empty.toml", env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    (tmp_path / "bad.toml").write_text("device_id = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml", env={})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.agent", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow  # the agent CLI in a subprocess
def test_cli_reports_a_bad_config_without_a_traceback(tmp_path):
    out = _cli("run", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2
    assert "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow  # the agent CLI in a subprocess
def test_cli_check_config_hides_secrets(tmp_path):
    path = write(tmp_path, broker_password="hunter2", artifact_token="tok-123")
    out = _cli("check-config", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert "device_id = pi-1" in out.stdout
    assert "hunter2" not in out.stdout and "tok-123" not in out.stdout


@pytest.mark.slow  # the agent CLI in a subprocess
def test_cli_help_on_every_command():
    for args in ([], ["run"], ["check-config"]):
        out = _cli(*args, "--help")
        assert out.returncode == 0
        assert "usage:" in out.stdout and len(out.stdout) > 100
