"""Agent settings: a TOML file, overridden by EDGEFLEET_AGENT_* environment variables."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edgefleet.shared import broker_endpoint, check_device_id, load_public_key, trusted_keyring
from edgefleet.shared.errors import ConfigError

ENV_PREFIX = "EDGEFLEET_AGENT_"


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    broker_url: str
    artifact_base_url: str
    trusted_keys: tuple[str, ...]
    state_dir: Path
    profile: str = "default"
    broker_username: str | None = None
    broker_password: str | None = field(default=None, repr=False)
    broker_ca_file: str | None = None
    # the operator's CA (PEM), written by `edgefleet device add` when the controller has one:
    # trusted for mqtts:// and https:// besides the system's CAs
    tls_ca: str | None = field(default=None, repr=False)
    artifact_token: str | None = field(default=None, repr=False)
    inference_host: str = "127.0.0.1"
    inference_port: int = 8470
    topic_prefix: str = "edgefleet/v1"
    telemetry_interval_s: float = 10.0
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    download_timeout_s: float = 30.0
    min_throughput_bytes_per_s: float = 1024.0
    # a failed download is tried again, with backoff and full jitter, until the manifest
    # expires; download_deadline_s (seconds after the deployment was accepted) and
    # download_attempts (0: no cap) can end it sooner
    download_retry_s: float = 2.0  # the first backoff window
    download_retry_max_s: float = 60.0  # the largest one
    download_deadline_s: float | None = None
    download_attempts: int | None = None
    log_level: str = "info"

    @property
    def broker(self) -> tuple[str, int, bool]:
        """(host, port, tls) from the broker URL."""
        endpoint = broker_endpoint(self.broker_url)
        return endpoint.host, endpoint.port, endpoint.tls

    def keyring(self) -> dict[str, Any]:
        return trusted_keyring(load_public_key(k) for k in self.trusted_keys)


_TYPES: dict[str, type] = {f.name: f.type for f in fields(AgentConfig)}  # type: ignore[misc]


def _coerce(name: str, value: Any) -> Any:
    kind = str(_TYPES[name])
    if kind.endswith(" | None") and kind != "str | None":
        # a number that may be unset: TOML has no null, the environment may say ""
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        kind = kind.removesuffix(" | None")
    try:
        if "tuple" in kind:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of strings")
            return tuple(value)
        if kind == "Path":
            return Path(str(value)).expanduser()
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if kind == "float":
            return float(value)
        return None if value is None else str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: {exc}") from exc


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read the TOML file (if any), apply environment overrides, check everything."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    env = os.environ if env is None else env
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in _TYPES:
            values[key[len(ENV_PREFIX) :].lower()] = value
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    missing = sorted(
        f.name
        for f in fields(AgentConfig)
        if f.default is f.default_factory and f.name not in values
    )
    if missing:
        raise ConfigError(f"missing setting(s): {', '.join(missing)}")
    config = AgentConfig(**{k: _coerce(k, v) for k, v in values.items()})
    return _checked(config)


def _checked(config: AgentConfig) -> AgentConfig:
    check_device_id(config.device_id)
    parts = urlsplit(config.broker_url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(
            f"broker_url must look like mqtt://host:port or mqtts://host:port, "
            f"got {parts.scheme or 'no'} scheme"
        )
    changes: dict[str, Any] = {}
    if parts.username and not config.broker_username:
        changes["broker_username"] = unquote(parts.username)
    if parts.password and not config.broker_password:
        changes["broker_password"] = unquote(parts.password)
    if changes:
        # keep credentials out of the URL so logging the URL never leaks them
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        changes["broker_url"] = f"{parts.scheme}://{netloc}"
    art = urlsplit(config.artifact_base_url)
    if art.scheme not in ("http", "https") or not art.hostname:
        raise ConfigError("artifact_base_url must be an http:// or https:// URL")
    if not config.artifact_base_url.endswith("/"):
        changes["artifact_base_url"] = config.artifact_base_url + "/"
    if not config.trusted_keys:
        raise ConfigError("trusted_keys is empty: the agent would accept no manifest")
    config.keyring()  # raises ConfigError on a bad key
    if not 0 <= config.inference_port <= 65535:
        raise ConfigError(f"inference_port {config.inference_port} is not a TCP port")
    if config.telemetry_interval_s <= 0:
        raise ConfigError("telemetry_interval_s must be positive")
    if config.download_attempts is not None and config.download_attempts < 0:
        raise ConfigError("download_attempts must be 0 (no cap) or more")
    if config.download_attempts == 0:
        changes["download_attempts"] = None
    if not 0 <= config.download_retry_s <= config.download_retry_max_s < math.inf:
        raise ConfigError("download_retry_s must be between 0 and download_retry_max_s")
    deadline = config.download_deadline_s
    if deadline is not None and not 0 < deadline < math.inf:
        raise ConfigError("download_deadline_s must be a positive number of seconds")
    if changes:
        config = replace(config, **changes)
    return config
