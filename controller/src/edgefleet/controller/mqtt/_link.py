"""The controller's one MQTT adapter: a paho client built from a ``BrokerEndpoint`` with the
MQTT 5 session settings in one place, every callback guarded, and one "publish and wait
for the broker's acknowledgement". Nothing of paho leaves this module: handlers receive a
frozen :class:`Received`, and paho's failures become ``BrokerError``."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.shared import BrokerEndpoint
from edgefleet.shared.errors import BrokerError

log = logging.getLogger("edgefleet.controller.mqtt")

# How long the broker keeps a persistent session (subscriptions and unacknowledged QoS 1
# messages) while the controller is away.
SESSION_EXPIRY_S = 24 * 3600
KEEPALIVE_S = 30
PUBLISH_TIMEOUT_S = 10.0
# paho's own queue while disconnected: dispatch can go on publishing through a short outage
MAX_QUEUED = 10_000


@dataclass(frozen=True)
class Received:
    """One message as it arrived; ``mid`` and ``qos`` are what :meth:`MqttLink.ack` needs."""

    topic: str
    payload: bytes
    mid: int
    qos: int


@dataclass(frozen=True)
class Session:
    """How the link's MQTT 5 session behaves.

    ``persistent``: ``clean_start=False`` with a session-expiry interval, so messages sent
    while the client was away are kept for it; otherwise a clean session ending with the
    connection. ``manual_ack``: QoS 1 messages are acknowledged only by :meth:`MqttLink.ack`
    (after they were stored), so the broker delivers unacknowledged ones again."""

    client_id: str
    persistent: bool = False
    manual_ack: bool = False
    session_expiry_s: int = SESSION_EXPIRY_S
    keepalive_s: int = KEEPALIVE_S


Handler = Callable[[Received], None]


class MqttLink:
    """A connection to the broker that subscribes to ``subscriptions`` on every (re)connect
    and hands what arrives to ``on_message`` on paho's network thread (which must only queue
    or do quick work). ``on_connected``/``on_disconnected`` follow the connection."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        session: Session,
        *,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Handler | None = None,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        tls_ca: str | None = None,
    ) -> None:
        """``tls_ca``: the PEM of the CA that signed the broker's certificate (the operator's
        own, see ``home.ensure_tls``); without it an ``mqtts://`` broker is checked against
        the system's CAs."""
        self.endpoint = endpoint
        self.tls_ca = tls_ca
        self.session = session
        self.subscriptions = list(subscriptions)
        self._on_message_handler = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._connected = threading.Event()
        self._ready = threading.Event()  # subscribed (or refused) after the latest connect
        self._refused: str | None = None
        self._subscribe_mid: int | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=session.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=session.manual_ack,
        )
        self._client.max_queued_messages_set(MAX_QUEUED)
        self._client.reconnect_delay_set(1, 10)
        self._client.on_connect = self._guarded(self._handle_connect)
        self._client.on_subscribe = self._guarded(self._handle_subscribe)
        self._client.on_disconnect = self._guarded(self._handle_disconnect)
        self._client.on_message = self._guarded(self._handle_message)

    # -- the connection ---------------------------------------------------------------

    def start(self, *, blocking: bool = False) -> None:
        """Start the network loop; paho reconnects by itself after a loss. ``blocking``
        opens the connection now, so an unreachable broker raises here, not later."""
        broker = self.endpoint
        if broker.username:
            self._client.username_pw_set(broker.username, broker.password)
        props = Properties(PacketTypes.CONNECT)
        if self.session.persistent:
            props.SessionExpiryInterval = self.session.session_expiry_s
        try:
            if broker.tls:
                self._client.tls_set_context(ssl.create_default_context(cadata=self.tls_ca))
            connect = self._client.connect if blocking else self._client.connect_async
            connect(
                broker.host,
                broker.port,
                keepalive=self.session.keepalive_s,
                clean_start=not self.session.persistent,
                properties=props,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise BrokerError(f"cannot reach the broker at {broker.public_url}: {exc}") from exc
        self._client.loop_start()

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until connected and subscribed; raise ``BrokerError`` (and close) when the
        broker refuses us or does not answer within ``timeout_s``."""
        if not self._ready.wait(timeout_s) or self._refused:
            why = self._refused or f"no answer in {timeout_s:g} s"
            self.close()
            raise BrokerError(f"the broker at {self.endpoint.public_url} did not let us in: {why}")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def close(self) -> None:
        # disconnect first: loop_stop() on a live connection waits out paho's select timeout
        self._client.disconnect()
        self._client.loop_stop()

    # -- sending and acknowledging ------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        """Publish at QoS 1 and return once the broker has acknowledged it (PUBACK).

        Raises ``BrokerError`` when paho refuses or drops the message or no PUBACK arrives
        within ``timeout_s``; the message may or may not have reached the broker then."""
        info = self._client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued
            raise BrokerError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(timeout=timeout_s)
        except (RuntimeError, ValueError) as exc:  # paho: dropped from its queue / not queued
            raise BrokerError(f"publish to {topic} failed: {exc}") from exc
        if not info.is_published():
            raise BrokerError(f"the broker did not acknowledge {topic} in {timeout_s:g} s")

    def ack(self, received: Received) -> None:
        """Acknowledge a QoS 1 message (with ``manual_ack``) once it is safely stored."""
        if received.qos:
            self._client.ack(received.mid, received.qos)

    # -- paho's network thread ------------------------------------------------------------

    def _guarded(self, handler: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            try:
                handler(*args)
            except Exception:  # paho would re-raise it and end its network loop
                log.exception("handling an MQTT callback failed")

        return call

    def _handle_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("the broker at %s refused us: %s", self.endpoint.public_url, reason)
            self._refused = str(reason)
            self._ready.set()
            return
        self._refused = None
        self._connected.set()
        log.info("connected to %s", self.endpoint.public_url)
        if self.subscriptions:
            _, self._subscribe_mid = client.subscribe(self.subscriptions)
        else:
            self._ready.set()
        if self._on_connected is not None:
            self._on_connected()

    def _handle_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        if mid != self._subscribe_mid:
            return
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._refused = f"subscription refused: {', '.join(failed)}"
            log.warning("the broker refused our subscriptions: %s", ", ".join(failed))
        self._ready.set()

    def _handle_disconnect(self, *_: Any) -> None:
        self._connected.clear()
        log.info("disconnected from the broker")
        if self._on_disconnected is not None:
            self._on_disconnected()

    def _handle_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_message_handler is not None:
            self._on_message_handler(Received(msg.topic, bytes(msg.payload), msg.mid, msg.qos))
