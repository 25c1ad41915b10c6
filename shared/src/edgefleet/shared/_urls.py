"""Broker URLs taken apart once, and URLs fit for log lines and messages."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import ConfigError


def redacted_url(url: str) -> str:
    """``url`` fit for a log line or an error message: any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


@dataclass(frozen=True)
class BrokerEndpoint:
    """A ``broker_url`` taken apart, for every MQTT client edgefleet opens."""

    host: str
    port: int
    tls: bool
    username: str | None  # percent-decoded, as a password with reserved characters must be
    password: str | None
    scheme: str = "mqtt"

    @property
    def public_url(self) -> str:
        """The URL without credentials: for devices' configs, logs and messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def broker_endpoint(url: str) -> BrokerEndpoint:
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError("broker_url has a bad port") from exc
    return BrokerEndpoint(
        host=parts.hostname or "127.0.0.1",
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        scheme="mqtts" if tls else "mqtt",
    )
