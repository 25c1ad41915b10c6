"""The agent's MQTT session: paho-mqtt 2.x behind a narrow seam.

Persistent MQTT 5 session, retained status with a last will, birth message
and resubscription on every (re)connect, reconnect backoff with jitter, and
manual acknowledgement so a command is acknowledged only once the agent has
taken charge of it. Nothing paho-shaped leaves this module.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ._link import Inbound, Outbound

log = logging.getLogger("edgefleet.agent.mqtt")


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    client_id: str
    tls: bool = False
    ca_file: str | None = None
    ca_pem: str | None = None  # the operator's CA, from agent.toml's tls_ca
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # QoS 1 messages kept while the broker is away (events, status), sent on reconnect;
    # a full queue drops the newest, logged. 10,000 events of ~1 KB: ~10 MB at worst.
    max_queued: int = 10_000


def tls_context(ca_file: str | None, ca_pem: str | None) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca_file`` and/or ``ca_pem`` (the
    operator's own CA), or the system's CAs when neither is given."""
    if ca_file is None and ca_pem is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=ca_file, cadata=ca_pem)


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Exponential backoff with 'equal jitter': half fixed, half random, so a fleet
    that lost its broker at the same instant does not come back in the same instant."""
    ceiling = min(high, low * (2 ** min(attempt, 30)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def _unset() -> Outbound:
    raise RuntimeError("the MQTT link was not started")


class MqttLink:
    def __init__(self, settings: BrokerSettings, *, subscriptions: list[str]) -> None:
        self._settings = settings
        self._subscriptions = subscriptions
        self._on_message: Callable[[Inbound], None] = lambda message: None
        self._birth: Callable[[], Outbound] = _unset
        self._will: Callable[[], Outbound] = _unset
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._generation = 0
        self._attempt = 0
        self._rng = random.Random()
        self._dropped = 0  # messages refused by a full queue since the last connect
        self._dropped_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.max_queued_messages_set(settings.max_queued)
        if settings.username:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            client.tls_set_context(tls_context(settings.ca_file, settings.ca_pem))
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        self._client = client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(
        self,
        *,
        on_message: Callable[[Inbound], None],
        birth: Callable[[], Outbound],
        will: Callable[[], Outbound],
    ) -> None:
        self._on_message, self._birth, self._will = on_message, birth, will
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def publish(self, message: Outbound) -> None:
        """Queue a message. paho keeps QoS 1 messages, in order and across reconnects of
        this client, until the broker acknowledges them (up to ``max_queued``); QoS 0
        ones (telemetry) are dropped while disconnected."""
        info = self._client.publish(
            message.topic, message.payload, qos=message.qos, retain=message.retain
        )
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            with self._dropped_lock:
                self._dropped += 1
                dropped = self._dropped
            if dropped == 1 or dropped % 100 == 0:  # one line per hundred, not per message
                log.warning(
                    "outgoing queue full (%d messages wait for the broker): dropped a message "
                    "to %s, %d dropped since the last connect",
                    self._settings.max_queued, message.topic, dropped,
                )  # fmt: skip
        elif info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish to %s not queued: %s", message.topic, mqtt.error_string(info.rc))

    def stop(self, farewell: Outbound | None = None, timeout: float = 3.0) -> None:
        if farewell is not None and self.connected:
            info = self._client.publish(
                farewell.topic, farewell.payload, qos=farewell.qos, retain=farewell.retain
            )
            # the network thread is still looping, so this can complete
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
        with contextlib.suppress(OSError, ValueError):
            self._client.disconnect()

    # -- network thread ------------------------------------------------------------

    def _run(self) -> None:
        s = self._settings
        first = True
        while not self._stop.is_set():
            will = self._will()
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
            try:
                if first:
                    props = Properties(PacketTypes.CONNECT)
                    props.SessionExpiryInterval = s.session_expiry_s
                    self._client.connect(
                        s.host,
                        s.port,
                        keepalive=s.keepalive_s,
                        clean_start=False,
                        properties=props,
                    )
                    first = False
                else:
                    self._client.reconnect()
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._pause(f"cannot reach broker {s.host}:{s.port}: {exc}")
                continue
            while not self._stop.is_set():
                rc = self._client.loop(timeout=0.5)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
            if not self._stop.is_set():
                self._pause(f"lost the broker {s.host}:{s.port}")

    def _pause(self, why: str) -> None:
        self._connected.clear()
        s = self._settings
        delay = backoff_delay(self._attempt, s.reconnect_min_s, s.reconnect_max_s, self._rng)
        self._attempt += 1
        log.warning("%s; retrying in %.1fs", why, delay)
        self._stop.wait(delay)

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: object,
        properties: object,
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the connection: %s", reason)
            return
        self._generation += 1
        self._attempt = 0
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        if dropped:
            log.warning("%d outgoing messages were dropped while the broker was away", dropped)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        birth = self._birth()
        client.publish(birth.topic, birth.payload, qos=birth.qos, retain=birth.retain)
        self._connected.set()
        log.info(
            "connected to broker (session present: %s)", getattr(flags, "session_present", "?")
        )

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: object,
        properties: object,
    ) -> None:
        self._connected.clear()

    def _handle_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        generation = self._generation
        mid, qos = msg.mid, msg.qos

        acked = threading.Event()

        def ack() -> None:
            # An ack for a packet from an earlier connection would name the wrong
            # packet; the broker redelivers that one and we deduplicate it.
            if qos > 0 and not acked.is_set() and generation == self._generation:
                acked.set()
                client.ack(mid, qos)

        try:
            self._on_message(Inbound(topic=msg.topic, payload=bytes(msg.payload), ack=ack))
        except Exception:  # one bad handler must never kill the network loop
            log.exception("message handler failed on %s", msg.topic)
            ack()
