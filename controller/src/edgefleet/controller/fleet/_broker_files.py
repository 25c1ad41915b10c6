"""Mosquitto files that make the broker enforce who may say what.

Signed manifests already keep a device from taking orders from anyone but the
controller; these files keep a device from speaking for another one (its status,
events and telemetry) and keep strangers off the broker:

- ``passwd``: Mosquitto's ``password_file``: each device (user name = device id, password =
  the one in its agent.toml, stored here only as the ``$7$`` hash made at enrolment), the
  controller's daemon, whose user name and password come from ``broker_url``, and the
  CLI's short sessions (``--measure-on``) as ``<that user>-cli`` with the same password;
- ``acl``: the daemon reads and writes everything under the topic prefix; the CLI reads
  devices' status and events and writes their commands; a device reads only its command
  topic and writes only its own status, events and telemetry;
- ``edgefleet.conf``: the lines that turn both on, for Mosquitto's ``include_dir``, and the
  listener of ``broker_url``'s port, on which a client's id is its user name
  (``use_username_as_clientid``): no one can take over another's session, and packets
  larger than a protocol message can be are refused.

The files are mode 0640 and, where a ``mosquitto`` group exists and we may, in that group:
Mosquitto reads them after dropping root.

Regenerate after ``device add`` or ``device remove`` and send Mosquitto SIGHUP to reload.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import col, select

from edgefleet import shared
from edgefleet.shared import Channel, broker_endpoint
from edgefleet.shared.errors import ConfigError

from ..home import Home, write_private
from ..registry import Device
from ._devices import mosquitto_password_hash

BROKER_GROUP = "mosquitto"
DEVICE_WRITES = (Channel.STATUS, Channel.EVENTS, Channel.TELEMETRY)
CLI_USER_SUFFIX = "-cli"
# what the broker holds for one client beyond its in-flight window
MAX_QUEUED_MESSAGES = 200_000
# seconds between the broker's saves of its memory: the most a crash can lose
AUTOSAVE_S = 1
# the largest message plus room for the topic, properties and the MQTT header
MAX_PACKET_BYTES = shared.MAX_MESSAGE_BYTES + 64 * 1024


def cli_broker_user(controller_user: str) -> str:
    """The user the CLI's short MQTT sessions log in as: the broker binds client ids to user
    names, so they must not share the daemon's, whose session they would take over."""
    return controller_user + CLI_USER_SUFFIX


@dataclass(frozen=True)
class BrokerConfig:
    folder: Path
    password_file: Path
    acl_file: Path
    conf_file: Path
    controller_user: str
    devices: int
    listener: str  # "port" or "port address"


def write_broker_config(home: Home, folder: Path, *, bind: str | None = None) -> BrokerConfig:
    """Write ``passwd``, ``acl`` and ``edgefleet.conf`` into ``folder`` (created if missing;
    files mode 0640, replaced atomically).

    The listener takes ``broker_url``'s port, on ``bind`` (an address; by default
    ``broker_url``'s host when that is an IP address, every interface otherwise)."""
    user, password = controller_credentials(home.settings.broker_url)
    cli_user = cli_broker_user(user)
    with home.session() as session:
        devices = session.exec(
            select(Device.name, Device.mqtt_password_hash).order_by(col(Device.name))
        ).all()
    taken = [name for name, _ in devices if name in (user, cli_user)]
    if taken:
        raise ConfigError(
            f"a device is named {taken[0]!r} like one of the controller's broker users "
            f"({user}, {cli_user}); give the controller another user name in broker_url"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    folder = folder.resolve()
    prefix = home.settings.topic_prefix
    lines = [f"{u}:{mosquitto_password_hash(password)}" for u in (user, cli_user)]
    lines += [f"{name}:{digest}" for name, digest in devices]
    acl = [
        "# edgefleet: written by `edgefleet broker config`; regenerate rather than edit",
        "# the controller's daemon",
        f"user {user}",
        f"topic readwrite {prefix}/#",
        "",
        "# the controller's command line (on-device benchmarks)",
        f"user {cli_user}",
        f"topic read {prefix}/devices/+/{Channel.STATUS.value}",
        f"topic read {prefix}/devices/+/{Channel.EVENTS.value}",
        f"topic write {prefix}/devices/+/{Channel.CMD.value}",
        "",
        "# every device, by its user name (= device id): its own topics only",
        f"pattern read {prefix}/devices/%u/{Channel.CMD.value}",
        *(f"pattern write {prefix}/devices/%u/{ch.value}" for ch in DEVICE_WRITES),
    ]
    result = BrokerConfig(
        folder=folder,
        password_file=folder / "passwd",
        acl_file=folder / "acl",
        conf_file=folder / "edgefleet.conf",
        controller_user=user,
        devices=len(devices),
        listener=_listener(home.settings.broker_url, bind),
    )
    conf = [
        "# edgefleet: clients must log in, and the ACL says what each may do",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {result.password_file}",
        f"acl_file {result.acl_file}",
        "# sessions, queued orders and retained statuses survive a restart; a crash loses",
        "# what changed since the last save, so save every second rather than every half",
        "# hour (the daemon asks devices about what was lost and sends it again)",
        "persistence true",
        f"autosave_interval {AUTOSAVE_S}",
        "# per client: the controller's queue takes the burst of a whole fleet's messages",
        "# at once (10,000 devices, ~20 a deployment) while ingest catches up; beyond it",
        "# Mosquitto drops them. A device's queue holds only its commands",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "# no message of the protocol is larger: a client sending more is disconnected",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "",
        "# the listener of broker_url; its options follow it",
        f"listener {result.listener}",
        "# a client's id is its user name: no one can take over another's session",
        "use_username_as_clientid true",
    ]
    if broker_endpoint(home.settings.broker_url).tls:
        conf += _tls_lines(home, folder)
    _write(result.password_file, "\n".join(lines) + "\n")
    _write(result.acl_file, "\n".join(acl) + "\n")
    _write(result.conf_file, "\n".join(conf) + "\n")
    return result


def _tls_lines(home: Home, folder: Path) -> list[str]:
    """For an ``mqtts://`` broker_url: the listener speaks TLS with the home's certificate,
    copied beside the other files so Mosquitto can read it after dropping root."""
    host = broker_endpoint(home.settings.broker_url).host
    tls = home.tls()
    if tls is None:
        raise ConfigError(
            "broker_url is mqtts:// but this home has no certificate yet: run "
            "`edgefleet tls init` first"
        )
    if host not in tls.names:
        raise ConfigError(
            f"the server certificate is for {', '.join(tls.names)}, not {host}: run "
            f"`edgefleet tls init --san {host}`"
        )
    copies = {"ca.pem": tls.ca_cert, "server.pem": tls.server_cert, "server.key": tls.server_key}
    for name, source in copies.items():
        try:
            _write(folder / name, source.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from exc
    return [
        "# TLS with the certificate `edgefleet tls init` made (devices trust its CA)",
        f"cafile {folder / 'ca.pem'}",
        f"certfile {folder / 'server.pem'}",
        f"keyfile {folder / 'server.key'}",
        "tls_version tlsv1.2",
    ]


def _listener(broker_url: str, bind: str | None) -> str:
    broker = broker_endpoint(broker_url)
    if bind is None:
        try:
            bind = str(ipaddress.ip_address(broker.host))
        except ValueError:
            bind = ""  # a host name: every interface
    elif bind:
        try:
            bind = str(ipaddress.ip_address(bind))
        except ValueError:
            raise ConfigError(f"--bind {bind!r} is not an IP address") from None
    return f"{broker.port} {bind}".strip()


def controller_credentials(broker_url: str) -> tuple[str, str]:
    broker = broker_endpoint(broker_url)
    if not broker.username or not broker.password:
        raise ConfigError(
            "broker_url has no user name and password for the controller; set it in "
            "config.toml (or EDGEFLEET_BROKER_URL) like "
            "mqtt://edgefleet-controller:<a long random password>@host:1883"
        )
    try:  # it goes into passwd ("user:hash") and the ACL ("user NAME") as it is
        shared.check_device_id(broker.username)
    except ConfigError:
        raise ConfigError(
            f"the controller's broker user name {broker.username!r} must be 1-64 letters, "
            "digits, '.', '_' or '-'"
        ) from None
    return broker.username, broker.password


def _write(path: Path, text: str) -> None:
    write_private(path, text, mode=0o640, group=BROKER_GROUP)
