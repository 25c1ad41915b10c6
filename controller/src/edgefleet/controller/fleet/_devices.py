"""The fleet's devices: enrolling one (credentials and its agent config), listing, removing."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from edgefleet.shared import broker_endpoint
from edgefleet.shared.errors import AlreadyExists, ConfigError, Conflict, NotFound

from ..home import Home, record_profile, toml_value, write_private
from ..registry import Device, DeviceCreate, DevicePublic

_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
DEFAULT_STATE_DIR = "/var/lib/edgefleet-agent"


@dataclass(frozen=True)
class EnrolledDevice:
    device: DevicePublic
    agent_config: str  # TOML with the device's credentials: show once, never stored
    written_to: Path | None


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``["site=lab", "room=2"]`` → ``{"site": "lab", "room": "2"}``; anything else is refused."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key) or not value:
            raise ConfigError(
                f"malformed label {item!r}: use key=value "
                "(key: letters, digits, '.', '_', '/', '-')"
            )
        labels[key] = value
    return labels


def mosquitto_password_hash(password: str, *, iterations: int = 101) -> str:
    """The PBKDF2-SHA512 form Mosquitto's ``password_file`` uses (``$7$``)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Credentials:
    """A device's two secrets: the broker's password file and the artifact server each hold
    only a hash of their own, so one leaking (say, over a plaintext link) does not give the
    other."""

    broker_password: str
    artifact_token: str

    @classmethod
    def fresh(cls) -> Credentials:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32))


@dataclass(frozen=True)
class AgentSettings:
    """What every new device's agent config shares: where the broker and the artifacts are,
    which keys to trust, the CA. Read once for an enrolment of any size."""

    broker_url: str
    artifact_base_url: str
    trusted_keys: list[str]
    topic_prefix: str
    tls_ca: str | None

    @classmethod
    def of(cls, home: Home) -> AgentSettings:
        s = home.settings
        return cls(
            broker_url=broker_endpoint(s.broker_url).public_url,  # never the controller's login
            artifact_base_url=s.artifact_url,
            trusted_keys=home.trusted_key_texts(),  # both keys while a rotation runs
            topic_prefix=s.topic_prefix,
            tls_ca=home.tls_ca(),
        )


def add_device(
    home: Home,
    new: DeviceCreate,
    *,
    out: Path | None = None,
    state_dir: str = DEFAULT_STATE_DIR,
) -> EnrolledDevice:
    """Register a device and produce its agent config; with ``out``, write it there (mode 0600).

    The file is written before the database commit and removed if the commit
    fails, so a failure leaves neither a device row nor a stray credential.
    """
    profile = home.profile(new.profile)
    if out is not None and out.exists():
        raise ConfigError(f"{out} already exists; remove it or choose another --out")
    credentials = Credentials.fresh()
    try:
        with home.session(write=True) as session:
            if session.exec(select(Device).where(Device.name == new.name)).first():
                raise AlreadyExists(f"device {new.name!r} already exists")
            record_profile(session, profile)
            session.flush()  # the profile row first: the device's foreign key points at it
            device = device_row(new.name, profile.name, new.labels, credentials)
            session.add(device)
            text = render_agent_config(
                AgentSettings.of(home), device.name, profile.name, credentials, state_dir
            )
            if out is not None:
                write_private(out, text)  # mode 0600: it holds the device's secrets
            session.flush()
            public = DevicePublic.of(device)
    except Conflict as exc:  # enrolled by someone else since we looked
        if out is not None:
            out.unlink(missing_ok=True)
        raise AlreadyExists(f"device {new.name!r} already exists") from exc
    except BaseException:
        if out is not None:
            out.unlink(missing_ok=True)
        raise
    return EnrolledDevice(device=public, agent_config=text, written_to=out)


def device_row(name: str, profile: str, labels: dict[str, str], credentials: Credentials) -> Device:
    """A new device's registry row: the hashes of its secrets, never the secrets."""
    return Device(
        name=name,
        profile=profile,
        labels=dict(labels),
        token_sha256=token_sha256(credentials.artifact_token),
        mqtt_password_hash=mosquitto_password_hash(credentials.broker_password),
    )


def agent_config_text(
    home: Home,
    device_id: str,
    profile: str,
    *,
    broker_password: str,
    artifact_token: str,
    state_dir: str,
) -> str:
    """The agent's ``agent.toml`` (keys as in ``edgefleet.agent``'s config)."""
    credentials = Credentials(broker_password, artifact_token)
    return render_agent_config(AgentSettings.of(home), device_id, profile, credentials, state_dir)


def render_agent_config(
    shared: AgentSettings, device_id: str, profile: str, credentials: Credentials, state_dir: str
) -> str:
    """``agent_config_text`` from settings read once (``AgentSettings.of``)."""
    values: list[tuple[str, object]] = [
        ("device_id", device_id),
        ("profile", profile),
        ("broker_url", shared.broker_url),
        ("broker_username", device_id),
        ("broker_password", credentials.broker_password),
        ("artifact_base_url", shared.artifact_base_url),
        ("artifact_token", credentials.artifact_token),
        ("trusted_keys", shared.trusted_keys),
        ("state_dir", state_dir),
        ("topic_prefix", shared.topic_prefix),
        ("inference_port", 8470),
        ("telemetry_interval_s", 10.0),
    ]
    if shared.tls_ca is not None:  # the operator's own CA: the device trusts it for mqtts and https
        values.append(("tls_ca", shared.tls_ca))
    head = [
        f"# edgefleet agent config for device {device_id!r} (profile {profile}).",
        "# It holds this device's credentials: keep it private (mode 0600).",
    ]
    return "\n".join(head + [f"{k} = {toml_value(v)}" for k, v in values]) + "\n"


def list_devices(
    home: Home, *, profile: str | None = None, labels: dict[str, str] | None = None
) -> list[DevicePublic]:
    with home.session() as session:
        query = select(Device).order_by(Device.name)
        if profile is not None:
            query = query.where(Device.profile == profile)
        devices = session.exec(query).all()
        # labels are JSON; filtering in Python keeps one code path for SQLite and PostgreSQL
        wanted = (labels or {}).items()
        return [DevicePublic.of(d) for d in devices if wanted <= (d.labels or {}).items()]


def get_device(home: Home, name: str) -> DevicePublic:
    with home.session() as session:
        return DevicePublic.of(_find(session, name))


def remove_device(home: Home, name: str) -> DevicePublic:
    """Forget a device, its deployments, events and telemetry. Its credentials stop working."""
    with home.session(write=True) as session:
        device = _find(session, name)
        public = DevicePublic.of(device)
        session.delete(device)
    return public


def _find(session: Session, name: str) -> Device:
    device = session.exec(select(Device).where(Device.name == name)).first()
    if device is None:
        raise NotFound(f"unknown device {name!r}")
    return device
