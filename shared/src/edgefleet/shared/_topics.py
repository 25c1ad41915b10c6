"""MQTT topic builders. Every topic edgefleet uses is spelled here and nowhere else."""

from __future__ import annotations

import re
from enum import StrEnum

from .errors import ConfigError, MessageError

DEFAULT_PREFIX = "edgefleet/v1"

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Channel(StrEnum):
    """The four per-device channels of DESIGN §3."""

    CMD = "cmd"
    STATUS = "status"
    EVENTS = "events"
    TELEMETRY = "telemetry"


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is safe inside a topic and a file name."""
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise ConfigError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return device_id


def device_topic(device_id: str, channel: Channel, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/devices/{check_device_id(device_id)}/{Channel(channel).value}"


def command_topic(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, Channel.CMD, prefix)


def status_topic(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, Channel.STATUS, prefix)


def events_topic(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, Channel.EVENTS, prefix)


def telemetry_topic(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, Channel.TELEMETRY, prefix)


def fleet_topic(
    channel: Channel, prefix: str = DEFAULT_PREFIX, share_group: str | None = None
) -> str:
    """Wildcard subscription for one channel of every device.

    ``share_group`` makes it an MQTT 5 shared subscription, so several
    controller processes split the load.
    """
    topic = f"{prefix}/devices/+/{Channel(channel).value}"
    return f"$share/{share_group}/{topic}" if share_group else topic


def parse_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, Channel]:
    """Split a concrete device topic into (device id, channel)."""
    head = f"{prefix}/devices/"
    if not topic.startswith(head):
        raise MessageError(f"topic {topic!r} is not under {head!r}")
    parts = topic[len(head) :].split("/")
    if len(parts) != 2:
        raise MessageError(f"topic {topic!r} is not a device topic")
    try:
        return check_device_id(parts[0]), Channel(parts[1])
    except (ValueError, ConfigError) as exc:
        raise MessageError(f"topic {topic!r} is not a device topic") from exc
