"""The controller's one MQTT adapter: a paho client built from a ``BrokerEndpoint`` with the
MQTT 5 session settings in one place, every callback guarded, and one "publish and wait
for the broker's acknowledgement". Nothing of paho leaves this module: handlers receive a
frozen :class:`Received`, and paho's failures become ``BrokerError``.

paho retries a lost or refused connection by itself (``reconnect_delay_set``); the link
logs each failure with the broker's own reason (a warning when it first happens or changes,
then a reminder every ``REMIND_EVERY_S``, debug in between) and keeps the latest one, with
the time the connection last came up or went down, for ``/healthz``."""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
# a batch's acknowledgements come back among whatever else the broker is sending us (a
# whole fleet's answers to the batch before): they get longer
PUBLISH_MANY_TIMEOUT_S = 30.0
# paho's own queue while disconnected: dispatch can go on publishing through a short outage
MAX_QUEUED = 10_000
MAX_INFLIGHT = 1_000
# paho's wait between attempts doubles from the first to the second figure
RECONNECT_DELAY_S = (1, 10)
# a failure repeating the previous one is logged at warning level at most this often
REMIND_EVERY_S = 60.0


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
        self._settled = threading.Event()  # the first attempt has an outcome
        self._refused: str | None = None
        self._subscribe_mid: int | None = None
        self._state_lock = threading.Lock()
        self._since = datetime.now(UTC)  # when the connection last came up or went down
        self._last_error: str | None = None
        self._failures = 0  # attempts failed since the connection was last up
        self._warned_at = float("-inf")  # time.monotonic() of the last warning
        self._closing = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=session.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=session.manual_ack,
        )
        self._client.max_queued_messages_set(MAX_QUEUED)
        # as many unacknowledged publishes as the broker's receive maximum allows (MQTT 5
        # negotiates it down): dispatch publishes a batch back to back
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client.reconnect_delay_set(*RECONNECT_DELAY_S)
        self._client.on_connect = self._guarded(self._handle_connect)
        self._client.on_connect_fail = self._guarded(self._handle_connect_fail)
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

    def wait_settled(self, timeout_s: float) -> bool:
        """Wait until the first connection attempt has an outcome (connected, refused or
        failed); False when there is none within ``timeout_s``. Raises nothing."""
        return self._settled.wait(timeout_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def since(self) -> datetime:
        """When the connection last came up (while ``connected``) or went down (UTC); the
        link's creation time until the first attempt has an outcome."""
        with self._state_lock:
            return self._since

    @property
    def last_error(self) -> str | None:
        """Why the latest attempt failed or the connection was lost, in the broker's words
        where it gave any ("refused by the broker: Not authorized"); None until then. Kept
        after a reconnect, as history."""
        with self._state_lock:
            return self._last_error

    @property
    def failed_attempts(self) -> int:
        """Connection attempts failed since the connection was last up."""
        with self._state_lock:
            return self._failures

    def close(self) -> None:
        self._closing = True
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

    def publish_many(
        self, messages: Sequence[tuple[str, bytes]], *, timeout_s: float = PUBLISH_MANY_TIMEOUT_S
    ) -> list[bool]:
        """Publish every (topic, payload) at QoS 1 back to back, many in flight at once, then
        wait (``timeout_s`` in all) for the broker's acknowledgements; whether each was
        acknowledged, in order. Never raises: what was not acknowledged may or may not have
        reached the broker, and the caller keeps it to send again."""
        infos: list[mqtt.MQTTMessageInfo | None] = []
        for topic, payload in messages:
            info = self._client.publish(topic, payload, qos=1)
            ok = info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)
            infos.append(info if ok else None)
        deadline = time.monotonic() + timeout_s
        return [_acknowledged(info, deadline) for info in infos]

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
            self._refused = str(reason)
            self._attempt_failed(f"refused by the broker: {reason}")
            self._ready.set()
            return
        self._refused = None
        with self._state_lock:
            failed, self._failures = self._failures, 0
            self._since = datetime.now(UTC)
            self._warned_at = float("-inf")
        self._connected.set()
        self._settled.set()
        after = f" after {failed} failed attempt(s)" if failed else ""
        log.info("connected to %s%s", self.endpoint.public_url, after)
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

    def _handle_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        # paho calls this inside its `except OSError:` around the attempt, and passes no
        # reason: the exception being handled is the reason
        exc = sys.exc_info()[1]
        why = (getattr(exc, "strerror", None) or str(exc)) if exc else ""
        self._attempt_failed(f"cannot connect: {why or 'no reason given'}")

    def _attempt_failed(self, why: str) -> None:
        with self._state_lock:
            self._failures += 1
            attempt, repeated = self._failures, why == self._last_error
            self._last_error = why
            now = time.monotonic()
            warn = not repeated or now - self._warned_at >= REMIND_EVERY_S
            if warn:
                self._warned_at = now
        self._settled.set()
        log.log(
            logging.WARNING if warn else logging.DEBUG,
            "no connection to the broker at %s: %s (attempt %d; retrying within %d s)",
            self.endpoint.public_url,
            why,
            attempt,
            RECONNECT_DELAY_S[1],
        )

    def _handle_disconnect(
        self, _c: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any
    ) -> None:
        if not self._connected.is_set():
            return  # the end of a refused attempt, already told: paho calls it a protocol error
        self._connected.clear()
        if flags.is_disconnect_packet_from_server:
            why = f"the broker closed the connection: {reason}"
        else:
            why = f"connection lost ({reason})" if reason.is_failure else "disconnected"
        with self._state_lock:
            self._since = datetime.now(UTC)
            if not self._closing:
                self._last_error = why
        if self._closing:
            log.info("disconnected from the broker")
        else:
            log.warning("lost the broker at %s: %s; reconnecting", self.endpoint.public_url, why)
        if self._on_disconnected is not None:
            self._on_disconnected()

    def _handle_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_message_handler is not None:
            self._on_message_handler(Received(msg.topic, bytes(msg.payload), msg.mid, msg.qos))


def _acknowledged(info: mqtt.MQTTMessageInfo | None, deadline: float) -> bool:
    """Whether the broker acknowledged ``info`` by ``deadline`` (time.monotonic())."""
    if info is None:
        return False
    try:
        info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
    except (RuntimeError, ValueError):  # paho: dropped from its queue / not queued
        return False
    return info.is_published()
