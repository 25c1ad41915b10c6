"""Where the controller keeps its things: the home folder and its ``config.toml``.

Precedence, lowest first: built-in defaults, ``config.toml``, environment
(``EDGEFLEET_DATABASE_URL``, ``EDGEFLEET_BROKER_URL``, ``EDGEFLEET_ARTIFACT_URL``).
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgefleet.shared import DEFAULT_PREFIX, redacted_url
from edgefleet.shared.errors import ConfigError

HOME_ENV = "EDGEFLEET_HOME"
CONFIG_FILE = "config.toml"
_ENV_OVERRIDES = {
    "EDGEFLEET_DATABASE_URL": "database_url",
    "EDGEFLEET_BROKER_URL": "broker_url",
    "EDGEFLEET_ARTIFACT_URL": "artifact_url",
}


@dataclass(frozen=True)
class Settings:
    """Everything the controller reads from its home folder and environment."""

    home: Path
    database_url: str
    broker_url: str = "mqtt://127.0.0.1:1883"
    # The URL agents fetch artifacts from: the daemon's HTTP server as devices see it.
    artifact_url: str = "http://127.0.0.1:8471/artifacts/"
    topic_prefix: str = DEFAULT_PREFIX
    http_host: str = "127.0.0.1"
    http_port: int = 8471
    manifest_ttl_s: int = 24 * 3600
    # Each device's share of ingest: a burst of this many messages, then this many a
    # second (a device sends a status, ~8 events per deployment and telemetry every 10 s).
    ingest_burst_per_device: int = 600
    ingest_rate_per_device: float = 20.0
    # An order with no news from its device for this long makes the daemon ask the device
    # for its status, and send the order again if the device never received it.
    reconcile_after_s: float = 30.0
    # The fleet page and /api/v1 take this token (a Bearer header, or the page's login
    # cookie); `init` makes one. Empty: both are off.
    operator_token: str = ""
    # Who may reach the page and the API at all (addresses or networks, comma-separated);
    # everyone else gets 404. Loopback only unless widened here.
    web_allow: str = "127.0.0.0/8, ::1"
    # Telemetry retention (`edgefleet serve` every hour, or `edgefleet telemetry prune`):
    # rows older than telemetry_raw_days become one row per device, model and hour; rows
    # older than telemetry_keep_days are deleted. 0 turns either step off.
    telemetry_raw_days: int = 7
    telemetry_keep_days: int = 90

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_FILE

    @property
    def private_key_path(self) -> Path:
        return self.home / "keys" / "controller.key"

    @property
    def public_key_path(self) -> Path:
        return self.home / "keys" / "controller.pub"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def profiles_dir(self) -> Path:
        return self.home / "profiles"

    @property
    def is_initialised(self) -> bool:
        return self.config_path.is_file()


_DEFAULTS = Settings(home=Path("."), database_url="")


def default_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(HOME_ENV) or "~/.edgefleet").expanduser()


def default_database_url(home: Path) -> str:
    return f"sqlite:///{home / 'registry.db'}"


def load_settings(home: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``home/config.toml`` if it exists; a missing file gives the defaults."""
    env = os.environ if env is None else env
    home = (home or default_home(env)).expanduser().resolve()
    values: dict[str, Any] = {}
    path = home / CONFIG_FILE
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    for var, key in _ENV_OVERRIDES.items():
        if env.get(var):
            values[key] = env[var]
    known = {f.name for f in fields(Settings)} - {"home"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    values.setdefault("database_url", default_database_url(home))
    for f in fields(Settings):
        if f.name in values:
            values[f.name] = _typed(path, f.name, values[f.name], type(getattr(_DEFAULTS, f.name)))
    return _checked(Settings(home=home, **values))


def _typed(path: Path, key: str, value: object, kind: type) -> object:
    """``value`` if it is a ``kind`` (an int for a float too); a ConfigError otherwise."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        what = {int: "an integer", float: "a number", str: "a string"}[kind]
        raise ConfigError(f"{path}: {key} must be {what}")
    if kind in (int, float) and value < 0:  # type: ignore[operator]
        raise ConfigError(f"{path}: {key} must not be negative")
    return value


def _checked(settings: Settings) -> Settings:
    broker = urlsplit(settings.broker_url)
    if broker.scheme not in ("mqtt", "mqtts") or not broker.hostname:
        raise ConfigError(
            f"broker_url must look like mqtt://host:port, got {redacted_url(settings.broker_url)}"
        )
    art = urlsplit(settings.artifact_url)
    if art.scheme not in ("http", "https") or not art.hostname:
        raise ConfigError(
            f"artifact_url must be an http:// or https:// URL, got {settings.artifact_url!r}"
        )
    raw, keep = settings.telemetry_raw_days, settings.telemetry_keep_days
    if raw and keep and keep < raw:
        raise ConfigError(
            f"telemetry_keep_days ({keep}) must not be below telemetry_raw_days ({raw})"
        )
    if not settings.artifact_url.endswith("/"):
        settings = replace(settings, artifact_url=settings.artifact_url + "/")
    return settings


CONTROLLER_USER = "edgefleet-controller"


def with_controller_login(settings: Settings) -> Settings:
    """``settings`` with a fresh broker login for the controller in ``broker_url`` when it has
    none: user ``edgefleet-controller`` and a random password (``broker config`` writes both
    into Mosquitto's password file); and an operator token for the fleet page when there is
    none (kept in config.toml, mode 0600, like the broker password)."""
    if not settings.operator_token:
        settings = replace(settings, operator_token=secrets.token_urlsafe(32))
    parts = urlsplit(settings.broker_url)
    if parts.username:
        return settings
    login = f"{CONTROLLER_USER}:{secrets.token_urlsafe(24)}@"
    return replace(settings, broker_url=parts._replace(netloc=login + parts.netloc).geturl())


def config_text(settings: Settings) -> str:
    """The ``config.toml`` that ``init`` writes: every setting, so an operator sees the knobs."""
    lines = [
        "# edgefleet controller settings. Environment variables EDGEFLEET_DATABASE_URL,",
        "# EDGEFLEET_BROKER_URL and EDGEFLEET_ARTIFACT_URL override the values here.",
    ]
    for f in fields(Settings):
        if f.name == "home":
            continue
        value = getattr(settings, f.name)
        if f.name == "database_url" and value == default_database_url(settings.home):
            # left implicit so the home folder can move and take its database along
            lines.append(f"# database_url = {toml_value(value)}")
            continue
        lines.append(f"{f.name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value: object) -> str:
    """A TOML literal for a string, int, float, bool or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # JSON string escapes are valid TOML basic-string escapes when non-ASCII stays literal.
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")
