"""Topic builders and the parser: the only place edgefleet spells an MQTT topic."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edgefleet.shared import (
    DEFAULT_PREFIX,
    Channel,
    check_device_id,
    command_topic,
    device_topic,
    events_topic,
    fleet_topic,
    parse_topic,
    status_topic,
    telemetry_topic,
)
from edgefleet.shared.errors import ConfigError, MessageError

BUILDERS: list[tuple[Callable[..., str], Channel]] = [
    (command_topic, Channel.CMD),
    (status_topic, Channel.STATUS),
    (events_topic, Channel.EVENTS),
    (telemetry_topic, Channel.TELEMETRY),
]


def test_default_prefix() -> None:
    assert DEFAULT_PREFIX == "edgefleet/v1"


@pytest.mark.parametrize(("build", "channel"), BUILDERS, ids=lambda v: getattr(v, "__name__", v))
def test_builders(build: Callable[..., str], channel: Channel) -> None:
    expected = f"edgefleet/v1/devices/rpi-7/{channel.value}"
    assert build("rpi-7") == expected
    assert device_topic("rpi-7", channel) == expected


@pytest.mark.parametrize(("build", "channel"), BUILDERS, ids=lambda v: getattr(v, "__name__", v))
def test_builders_with_custom_prefix(build: Callable[..., str], channel: Channel) -> None:
    assert build("rpi-7", prefix="acme/fleet") == f"acme/fleet/devices/rpi-7/{channel.value}"


def test_literal_topics() -> None:
    assert command_topic("d1") == "edgefleet/v1/devices/d1/cmd"
    assert status_topic("d1") == "edgefleet/v1/devices/d1/status"
    assert events_topic("d1") == "edgefleet/v1/devices/d1/events"
    assert telemetry_topic("d1") == "edgefleet/v1/devices/d1/telemetry"


def test_device_topic_accepts_channel_name() -> None:
    assert device_topic("d1", "telemetry") == "edgefleet/v1/devices/d1/telemetry"  # type: ignore[arg-type]


def test_builders_validate_device_id() -> None:
    with pytest.raises(ConfigError):
        command_topic("a/b")


@pytest.mark.parametrize("channel", list(Channel), ids=str)
def test_fleet_topic(channel: Channel) -> None:
    assert fleet_topic(channel) == f"edgefleet/v1/devices/+/{channel.value}"
    assert fleet_topic(channel, prefix="acme") == f"acme/devices/+/{channel.value}"


@pytest.mark.parametrize("channel", list(Channel), ids=str)
def test_fleet_topic_shared_subscription(channel: Channel) -> None:
    assert (
        fleet_topic(channel, share_group="controllers")
        == f"$share/controllers/edgefleet/v1/devices/+/{channel.value}"
    )


@pytest.mark.parametrize(("build", "channel"), BUILDERS, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("device_id", ["rpi-7", "rpi-4.kitchen_1", "X" * 64])
def test_parse_round_trip(build: Callable[..., str], channel: Channel, device_id: str) -> None:
    assert parse_topic(build(device_id)) == (device_id, channel)
    assert parse_topic(build(device_id, prefix="a/b"), prefix="a/b") == (device_id, channel)


def test_parse_returns_a_channel() -> None:
    _, channel = parse_topic("edgefleet/v1/devices/d1/status")
    assert channel is Channel.STATUS


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/v2/devices/d1/cmd",  # wrong prefix
        "other/devices/d1/cmd",
        "devices/d1/cmd",
        "",
        "edgefleet/v1/devices/d1/cmd/extra",  # extra level
        "edgefleet/v1/devices/d1",  # missing channel
        "edgefleet/v1/devices/d1/",
        "edgefleet/v1/devices/d1/config",  # unknown channel
        "edgefleet/v1/devices/d1/CMD",
        "edgefleet/v1/devices/+/cmd",  # a wildcard is not a device
        "edgefleet/v1/devices//cmd",
        "edgefleet/v1/devices/d1\n/cmd",
        "$share/g/edgefleet/v1/devices/d1/cmd",
    ],
)
def test_parse_rejects(topic: str) -> None:
    with pytest.raises(MessageError, match="topic"):
        parse_topic(topic)


def test_parse_rejects_default_prefix_when_custom_expected() -> None:
    with pytest.raises(MessageError):
        parse_topic(command_topic("d1"), prefix="acme")


@pytest.mark.parametrize(
    "device_id",
    ["", "a/b", "+", "#", " x", "x ", "a" * 65, "-lead", ".hidden", "a\n", "caf\u00e9", "a+b"],
)
def test_check_device_id_rejects(device_id: str) -> None:
    with pytest.raises(ConfigError, match="invalid device id"):
        check_device_id(device_id)


def test_check_device_id_rejects_non_string() -> None:
    with pytest.raises(ConfigError):
        check_device_id(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("device_id", ["rpi-4.kitchen_1", "a", "A" * 64, "0"])
def test_check_device_id_accepts(device_id: str) -> None:
    assert check_device_id(device_id) == device_id
