"""One device cannot stall ingest: hostile values are refused at the door, a message the
registry will not take is dead-lettered while the rest of its batch is stored, a flood is
cut to the device's share, and only an unreachable registry leaves messages unacknowledged.

The unit tests run the daemon's Inbox on a real registry (SQLite, and PostgreSQL when set);
the last test runs `edgefleet serve`, a real broker and a real agent next to a hostile
device publishing raw MQTT."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session, func, select

from edgefleet import shared
from edgefleet.controller import Event, Home, Telemetry
from edgefleet.controller.daemon import (
    DeadLetter,
    DeviceRates,
    Inbound,
    Inbox,
    Metrics,
    RateLimit,
    ingest_many,
)
from edgefleet.controller.fleet import add_device
from edgefleet.controller.mqtt import Received
from edgefleet.controller.registry import DeviceCreate
from edgefleet.harness import ControllerFleet, wait_until, write_digits_model
from edgefleet.shared import N_BUCKETS
from edgefleet.shared.errors import RegistryError

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _event(device: str, state: str = "downloading", **fields: Any) -> dict[str, Any]:
    return {
        "schema": 1, "kind": "event", "device_id": device, "deployment_id": "dep-1",
        "state": state, "sent_at": NOW.isoformat(), **fields,
    }  # fmt: skip


def _telemetry(device: str, at: datetime = NOW, **model: Any) -> dict[str, Any]:
    stats = {
        "model": {"name": "digits", "version": "1.0.0"}, "deployment_id": "dep-1",
        "requests": 10, "latency_counts": [0] * N_BUCKETS, **model,
    }  # fmt: skip
    return {
        "schema": 1, "kind": "telemetry", "device_id": device, "sent_at": at.isoformat(),
        "interval_s": 10, "models": [stats],
    }  # fmt: skip


def _received(device: str, channel: shared.Channel, body: dict[str, Any] | bytes) -> Received:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    topic = shared.device_topic(device, channel)
    return Received(topic, payload, mid=uuid.uuid4().int % 60000, qos=1)


class Harness:
    def __init__(self, home: Home, store: Any = ingest_many, limit: RateLimit | None = None):
        self.acked: list[Received] = []
        self.slept: list[float] = []
        self.clock = 0.0
        self.metrics = Metrics()
        rates = DeviceRates(limit or RateLimit(per_s=1000, burst=1000), clock=lambda: self.clock)
        self.inbox = Inbox(
            home, self.metrics, self.acked.append, rates, store=store,
            now=lambda: NOW, sleep=self.slept.append,
        )  # fmt: skip

    def dead(self, reason: DeadLetter) -> int:
        return self.metrics.value("edgefleet_messages_dead_lettered_total", reason=reason.value)


@pytest.fixture
def devices(home: Home) -> Home:
    for name in ("pi-1", "evil"):
        add_device(home, DeviceCreate(name=name, profile="rpi4"))
    return home


def _count(home: Home, table: type) -> int:
    with home.session() as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


HOSTILE = {
    "an integer past 2^63": _telemetry("evil", requests=2**64),
    "NaN": json.dumps(_telemetry("evil", p95_ms=0.0)).replace("0.0", "NaN").encode(),
    "a negative count": _telemetry("evil", errors=-5),
    "a 900 kB error code": _event("evil", error_code="x" * 900_000),
    "the year 9999": _event("evil", sent_at="9999-01-01T00:00:00+00:00"),
    "a week-old event": _event("evil", sent_at=(NOW - timedelta(days=8)).isoformat()),
    "thousands of models in one message": {
        **_telemetry("evil"),
        "models": [_telemetry("evil")["models"][0]] * 2000,
    },
    "thousands of timings": _event("evil", timings_ms={f"k{i}": 1.0 for i in range(5000)}),
    "not JSON": b"\xff\xfe garbage",
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_values_are_dead_lettered_and_the_batch_goes_in(
    devices: Home, body: dict[str, Any] | bytes
) -> None:
    h = Harness(devices)
    channel = shared.Channel.EVENTS if b'"event"' in _raw(body) else shared.Channel.TELEMETRY
    batch = [
        _received("pi-1", shared.Channel.EVENTS, _event("pi-1")),
        _received("evil", channel, body),
        _received("pi-1", shared.Channel.TELEMETRY, _telemetry("pi-1")),
    ]
    h.inbox.write(batch)
    # every one acknowledged, so nothing is delivered again (dead letters first)
    assert len(h.acked) == 3 and set(h.acked) == set(batch)
    assert h.dead(DeadLetter.INVALID) == 1
    assert _count(devices, Event) == 1 and _count(devices, Telemetry) == 1


def _raw(body: dict[str, Any] | bytes) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def test_a_long_message_text_is_cut_not_refused(devices: Home) -> None:
    h = Harness(devices)
    h.inbox.write([_received("pi-1", shared.Channel.EVENTS, _event("pi-1", message="y" * 10**6))])
    with devices.session() as session:
        (stored,) = session.exec(select(Event.message)).all()
    assert len(stored) == shared.MAX_TEXT and stored.endswith("…")


def test_a_message_the_registry_refuses_alone_is_dead_lettered(devices: Home) -> None:
    def store(session: Session, batch: list[tuple[str, Inbound]]) -> int:
        if any(device == "evil" for device, _ in batch):
            raise RegistryError("database error: value out of range")  # e.g. a driver's limit
        return ingest_many(session, batch)

    h = Harness(devices, store=store)
    batch = [
        _received("evil", shared.Channel.EVENTS, _event("evil")),
        _received("pi-1", shared.Channel.EVENTS, _event("pi-1")),
    ]
    h.inbox.write(batch)
    assert sorted(r.topic for r in h.acked) == sorted(r.topic for r in batch)
    assert h.dead(DeadLetter.UNSTORABLE) == 1
    assert _count(devices, Event) == 1  # pi-1's, stored on its own


def test_an_unreachable_registry_acknowledges_nothing_and_retries(devices: Home) -> None:
    down = {"tries": 0}

    def store(session: Session, batch: list[tuple[str, Inbound]]) -> int:
        down["tries"] += 1
        raise RegistryError("database error: connection refused")

    h = Harness(devices, store=store)
    h.inbox._registry_answers = lambda: False  # type: ignore[method-assign]
    h.inbox.write([_received("pi-1", shared.Channel.EVENTS, _event("pi-1"))])
    assert h.acked == []  # the broker keeps it for the next connect
    assert h.slept == [0.2, 0.5, 1.0, 2.0, 5.0]
    assert h.dead(DeadLetter.UNSTORABLE) == 0


def test_a_flood_is_cut_to_the_devices_share_and_others_are_untouched(devices: Home) -> None:
    h = Harness(devices, limit=RateLimit(per_s=2, burst=50))
    flood = [
        _received("evil", shared.Channel.TELEMETRY, _telemetry("evil", NOW - timedelta(seconds=i)))
        for i in range(500)
    ]
    honest = [_received("pi-1", shared.Channel.EVENTS, _event("pi-1"))]
    h.inbox.write(flood + honest)
    assert len(h.acked) == 501
    assert h.dead(DeadLetter.RATE_LIMITED) == 450
    assert _count(devices, Telemetry) == 50 and _count(devices, Event) == 1

    h.clock += 10  # ten seconds later the device has earned 20 more
    h.inbox.write(
        [
            _received("evil", shared.Channel.TELEMETRY, _telemetry("evil", NOW + timedelta(0, i)))
            for i in range(1, 31)
        ]
    )
    assert _count(devices, Telemetry) == 70
    assert h.dead(DeadLetter.RATE_LIMITED) == 460


def test_rates_forget_the_least_recently_heard_device_first() -> None:
    rates = DeviceRates(RateLimit(per_s=0, burst=1), max_devices=2, clock=lambda: 0.0)
    assert rates.allow("a") and not rates.allow("a")
    assert rates.allow("b") and rates.allow("c")  # "a" forgotten: its bucket is full again
    assert rates.allow("a")


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_hostile_device_cannot_stop_another_devices_deployment(
    fleet: ControllerFleet,
) -> None:
    fleet.init()
    model = write_digits_model(fleet.tmp / "digits.onnx", seed=0)
    fleet.ok("model", "add", str(model), "--name", "digits", "--version", "1.0.0")
    fleet.add_device("pi-1", "rpi4")
    fleet.add_device("evil", "rpi4")
    fleet.start_daemon()

    # more unstorable messages than Mosquitto's in-flight window to the controller (100
    # in the harness), sent before the honest device even starts
    evil = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="evil", protocol=mqtt.MQTTv5)
    evil.connect("127.0.0.1", fleet.broker.port)
    evil.loop_start()
    now = datetime.now(UTC)
    hostile = [
        _telemetry("evil", now - timedelta(seconds=i), requests=2**64) for i in range(150)
    ] + [_event("evil", sent_at="9999-01-01T00:00:00+00:00")] * 50
    infos = [
        evil.publish(
            shared.telemetry_topic("evil")
            if m["kind"] == "telemetry"
            else shared.events_topic("evil"),
            json.dumps(m).encode(),
            qos=1,
        )
        for m in hostile
    ]
    for info in infos:
        info.wait_for_publish(timeout=30)

    fleet.start_agent("pi-1")
    fleet.ok("deploy", "digits:1.0.0", "--device", "pi-1")
    wait_until(lambda: fleet.status()["pi-1"]["state"] == "committed", 60, "pi-1 never committed")
    assert fleet.events("pi-1")[-1] == "committed"

    def metrics() -> str:
        return httpx.get(f"http://127.0.0.1:{fleet.http_port}/metrics").text

    dead = 'edgefleet_messages_dead_lettered_total{reason="invalid"} 200'
    try:
        wait_until(lambda: dead in metrics(), 30, "hostile messages not dead-lettered")
    except TimeoutError:
        pytest.fail(f"{metrics()}\n{fleet.logs()}")
    assert fleet.events("evil") == []
    evil.disconnect()
    evil.loop_stop()
