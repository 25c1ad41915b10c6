"""``edgefleet serve``: MQTT ingest, dispatch of pending deployments, and the artifact server.

Threads: paho's network loop (only queues what arrives), one ingest writer (decodes,
writes a batch per transaction, then acknowledges), the HTTP server, and the
caller's thread running the dispatch loop until ``stop`` is set: after every (re)connect
it first resends the commands no device has confirmed yet, then sends pending ones.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet import shared
from edgefleet.shared import (
    Channel,
    EventMessage,
    StatusMessage,
    TelemetryMessage,
    broker_endpoint,
    redacted_url,
)
from edgefleet.shared.errors import BrokerError, EdgefleetError, MessageError

from ._artifact_server import ArtifactServer, registry_token_check
from ._dispatch import dispatch_pending, resend_unconfirmed
from ._home import Home
from ._ingest import Inbound, ingest_many
from ._metrics import Metrics

log = logging.getLogger("edgefleet.controller.daemon")

CLIENT_ID = "edgefleet-controller"
SESSION_EXPIRY_S = 24 * 3600
_BATCH = 500


@dataclass(frozen=True)
class _Received:
    topic: str
    payload: bytes
    mid: int
    qos: int


class Daemon:
    def __init__(
        self, home: Home, *, dispatch_interval_s: float = 0.5, client_id: str = CLIENT_ID
    ) -> None:
        self.home = home
        self.settings = home.settings
        self.dispatch_interval_s = dispatch_interval_s
        self._inbox: queue.Queue[_Received | None] = queue.Queue()
        self._connected = threading.Event()
        self._resend_due = threading.Event()  # set on every connect, acted on in run()
        self._writer: threading.Thread | None = None
        self.metrics = Metrics()
        self.http = ArtifactServer(
            home.store,
            registry_token_check(home.engine),
            host=self.settings.http_host,
            port=self.settings.http_port,
            prefix=urlsplit(self.settings.artifact_url).path or "/",
            metrics=self.metrics,
            metrics_text=lambda: self.metrics.render(home.engine),
        )
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,  # acknowledged only once written to the registry
        )
        self.client.max_queued_messages_set(10_000)
        self.client.reconnect_delay_set(1, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- lifecycle -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then finish what was received and sent, and return."""
        self.http.start()
        log.info("artifact server on http://%s:%d", self.settings.http_host, self.http.port)
        self._writer = threading.Thread(target=self._write_loop, name="ingest", daemon=True)
        self._writer.start()
        self._connect()
        try:
            while not stop.is_set():
                if self._connected.is_set() and self._resend_due.is_set():
                    self._resend()
                # pending rows wait until the unconfirmed ones went out: lower sequences first
                if self._connected.is_set() and not self._resend_due.is_set():
                    try:
                        sent = dispatch_pending(self.home, self._publish)
                        if sent:
                            self.metrics.inc("edgefleet_deployments_dispatched_total", len(sent))
                    except EdgefleetError as exc:
                        log.error("dispatch: %s", exc)
                stop.wait(self.dispatch_interval_s)
        finally:
            self._shutdown()

    def _resend(self) -> None:
        """Send again what may never have reached the broker (see ``resend_unconfirmed``)."""
        self._resend_due.clear()  # first: a reconnect while resending asks for another round
        try:
            resent = resend_unconfirmed(self.home, self._publish)
        except EdgefleetError as exc:
            log.error("resend: %s", exc)
            self._resend_due.set()
            return
        if resent:
            self.metrics.inc("edgefleet_deployments_resent_total", len(resent))
            log.info("resent %d unconfirmed deployment(s) after connecting", len(resent))

    def _connect(self) -> None:
        broker = broker_endpoint(self.settings.broker_url)
        if broker.tls:
            self.client.tls_set()
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self.client.connect_async(
                broker.host,
                broker.port,
                keepalive=30,
                clean_start=False,  # events sent while we were down are kept for us
                properties=props,
            )
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to {broker.public_url}: {exc}") from exc
        self.client.loop_start()

    def _shutdown(self) -> None:
        log.info("stopping")
        # Write and acknowledge what has arrived; anything after the marker stays unacknowledged
        # and the broker delivers it again next time (persistent session).
        self._inbox.put(None)
        if self._writer:
            self._writer.join(timeout=30)
        self.client.disconnect()
        self.client.loop_stop()
        self.http.stop()
        log.info("stopped")

    # -- MQTT ------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        prefix = self.settings.topic_prefix
        client.subscribe(
            [(shared.fleet_topic(ch, prefix), 1) for ch in _INGESTED],
        )
        self._resend_due.set()
        self._connected.set()
        log.info("connected to %s", redacted_url(self.settings.broker_url))

    def _on_disconnect(self, *_: Any) -> None:
        self._connected.clear()
        log.info("disconnected from the broker")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(_Received(msg.topic, bytes(msg.payload), msg.mid, msg.qos))

    def _publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BrokerError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(timeout=10)
        except RuntimeError as exc:  # paho: the message was dropped from its queue
            raise BrokerError(f"publish to {topic} failed: {exc}") from exc
        if not info.is_published():  # no PUBACK yet: the row keeps its bytes for a resend
            self._resend_due.set()
            raise BrokerError(f"the broker did not acknowledge {topic} in time")

    # -- ingest ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        done = False
        while not done:
            first = self._inbox.get()
            batch: list[_Received] = []
            if first is None:
                done = True
            else:
                batch.append(first)
            while len(batch) < _BATCH:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
            if batch:
                self._write(batch)

    def _write(self, batch: list[_Received]) -> None:
        decoded: list[tuple[str, Inbound]] = []
        for item in batch:
            try:
                device, _channel = shared.parse_topic(item.topic, self.settings.topic_prefix)
                message = shared.decode(item.payload)
                if not isinstance(message, StatusMessage | EventMessage | TelemetryMessage):
                    raise MessageError(f"unexpected {message.kind} message")
                decoded.append((device, message))
            except MessageError as exc:
                log.warning("dropped a message on %s: %s", item.topic, exc)
                self.metrics.inc("edgefleet_messages_dropped_total")
        for attempt in range(5):
            try:
                with self.home.session(write=True) as session:
                    ingest_many(session, decoded)
                break
            except EdgefleetError as exc:
                log.error("writing %d messages failed (attempt %d): %s", len(batch), attempt, exc)
                time.sleep(0.2 * (attempt + 1))
            except Exception:  # a bug must not stop ingest; the broker redelivers unacked
                log.exception("writing %d messages failed", len(batch))
                return
        else:
            return  # not acknowledged: redelivered after a reconnect
        for _, message in decoded:
            self.metrics.inc("edgefleet_messages_ingested_total", kind=message.kind)
        for item in batch:
            if item.qos:
                self.client.ack(item.mid, item.qos)


_INGESTED = (Channel.STATUS, Channel.EVENTS, Channel.TELEMETRY)


def serve(home: Home, stop: threading.Event) -> None:
    Daemon(home).run(stop)
