"""The controller's one MQTT adapter against a real Mosquitto: publish-and-wait, guarded
handlers, and the persistent, manually acknowledged session the daemon's ingest relies on."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator

import pytest

from edgefleet import shared
from edgefleet.controller.mqtt import MqttLink, Received, Session
from edgefleet.harness import Broker
from edgefleet.shared.errors import BrokerError

TOPIC = "edgefleet/v1/devices/pi-1/events"


@pytest.fixture
def links(broker: Broker) -> Iterator[list[MqttLink]]:
    opened: list[MqttLink] = []
    yield opened
    for link in opened:
        link.close()


def _link(
    broker: Broker,
    opened: list[MqttLink],
    session: Session,
    inbox: queue.Queue[Received] | None = None,
    handler=None,  # type: ignore[no-untyped-def]
) -> MqttLink:
    link = MqttLink(
        shared.broker_endpoint(broker.url),
        session,
        subscriptions=[(TOPIC, 1)] if (inbox is not None or handler) else [],
        on_message=handler or (inbox.put if inbox is not None else None),
    )
    opened.append(link)
    link.start()
    link.wait_ready(10)
    return link


def _client_id() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_a_publish_returns_once_the_broker_has_it_and_subscribers_get_it(
    broker: Broker, links: list[MqttLink]
) -> None:
    inbox: queue.Queue[Received] = queue.Queue()
    _link(broker, links, Session(_client_id()), inbox)
    sender = _link(broker, links, Session(_client_id()))

    sender.publish(TOPIC, b"hello")

    got = inbox.get(timeout=10)
    assert (got.topic, got.payload, got.qos) == (TOPIC, b"hello", 1)


def test_a_failing_handler_is_logged_and_the_network_loop_goes_on(
    broker: Broker, links: list[MqttLink], caplog: pytest.LogCaptureFixture
) -> None:
    inbox: queue.Queue[bytes] = queue.Queue()

    def handler(received: Received) -> None:
        if received.payload == b"poison":
            raise ValueError("a bug in a handler")
        inbox.put(received.payload)

    _link(broker, links, Session(_client_id()), handler=handler)
    sender = _link(broker, links, Session(_client_id()))
    sender.publish(TOPIC, b"poison")
    sender.publish(TOPIC, b"after")

    assert inbox.get(timeout=10) == b"after"
    assert "handling an MQTT callback failed" in caplog.text
    assert "a bug in a handler" in caplog.text


def test_an_unacknowledged_message_comes_again_in_the_next_session(
    broker: Broker, links: list[MqttLink]
) -> None:
    """What ingest relies on: a message is acknowledged only once stored, so one that was
    received but never acknowledged is delivered again when the controller returns."""
    client_id = _client_id()
    session = Session(client_id, persistent=True, manual_ack=True)
    first: queue.Queue[Received] = queue.Queue()
    receiver = _link(broker, links, session, first)
    sender = _link(broker, links, Session(_client_id()))

    sender.publish(TOPIC, b"stored")
    receiver.ack(first.get(timeout=10))
    sender.publish(TOPIC, b"not stored")
    assert first.get(timeout=10).payload == b"not stored"  # received, never acknowledged
    receiver.close()

    again: queue.Queue[Received] = queue.Queue()
    _link(broker, links, session, again)
    assert again.get(timeout=10).payload == b"not stored"
    sender.publish(TOPIC, b"fresh")
    assert again.get(timeout=10).payload == b"fresh"  # and nothing else came back before it


def test_publishing_without_a_broker_fails_with_a_broker_error(
    broker: Broker, links: list[MqttLink]
) -> None:
    sender = _link(broker, links, Session(_client_id()))
    broker.stop(kill=True)
    with pytest.raises(BrokerError, match=r"did not acknowledge|failed"):
        sender.publish(TOPIC, b"into the void", timeout_s=0.5)


def test_a_batch_is_published_back_to_back_in_order_and_acknowledged(
    broker: Broker, links: list[MqttLink]
) -> None:
    inbox: queue.Queue[Received] = queue.Queue()
    _link(broker, links, Session(_client_id()), inbox)
    sender = _link(broker, links, Session(_client_id()))
    payloads = [f"order {i}".encode() for i in range(300)]
    assert sender.publish_many([(TOPIC, p) for p in payloads]) == [True] * 300
    assert [inbox.get(timeout=10).payload for _ in payloads] == payloads  # in order


def test_a_batch_without_a_broker_reports_nothing_acknowledged(
    broker: Broker, links: list[MqttLink]
) -> None:
    sender = _link(broker, links, Session(_client_id()))
    broker.stop(kill=True)
    assert sender.publish_many([(TOPIC, b"a"), (TOPIC, b"b")], timeout_s=0.5) == [False] * 2


def test_an_unreachable_broker_is_named_in_the_error(links: list[MqttLink]) -> None:
    from edgefleet.harness import free_port

    link = MqttLink(
        shared.broker_endpoint(f"mqtt://127.0.0.1:{free_port()}"), Session(_client_id())
    )
    with pytest.raises(BrokerError, match=r"cannot reach the broker at mqtt://127\.0\.0\.1:"):
        link.start(blocking=True)
