"""``edgefleet serve``: MQTT ingest, the jobs that send orders, and the artifact server.

Threads: paho's network loop (only queues what arrives), one ingest writer (decodes,
writes a batch per transaction, then acknowledges), the HTTP server, and the caller's
thread running the jobs on one clock until ``stop`` is set. The jobs, in order on every
tick: after a (re)connect, resend the commands the broker never acknowledged; then, once
nothing is left to resend (lower sequence numbers first), send pending trust updates; move
every active rollout on (start waves, judge gates, abort); then send pending deployments and
rollbacks (a device learns a new signing key before the first manifest it signs).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgefleet import shared
from edgefleet.shared import Channel
from edgefleet.shared.errors import BrokerError, ConfigError, EdgefleetError

from ..home import Home
from ..keys import resend_trust_updates, send_trust_updates
from ..mqtt import MqttLink, Received, Session
from ..rollout import advance_rollouts, dispatch_pending, resend_unconfirmed
from ._access import registry_token_check
from ._http import ArtifactServer
from ._inbox import DeviceRates, Inbox, RateLimit
from ._metrics import Metrics
from ._web import FleetWeb
from ._wire import server_tls_context

log = logging.getLogger("edgefleet.controller.daemon")

CLIENT_ID = "edgefleet-controller"
_BATCH = 500
_INGESTED = (Channel.STATUS, Channel.EVENTS, Channel.TELEMETRY)


@dataclass
class Job:
    """Work the daemon does every ``every_s`` seconds, on the loop's one clock."""

    name: str
    every_s: float
    run: Callable[[], None]
    due_at: float = 0.0


def run_jobs(
    jobs: list[Job],
    stop: threading.Event,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run each job when it is due, in list order, until ``stop`` is set. A job that raises
    an edgefleet error is logged and runs again at its next turn."""
    while not stop.is_set():
        now = clock()
        for job in jobs:
            if job.due_at <= now:
                try:
                    job.run()
                except EdgefleetError as exc:
                    log.error("%s: %s", job.name, exc)
                job.due_at = now + job.every_s
        next_due = min(job.due_at for job in jobs)
        stop.wait(max(next_due - clock(), 0.0))


class Daemon:
    def __init__(
        self, home: Home, *, dispatch_interval_s: float = 0.5, client_id: str = CLIENT_ID
    ) -> None:
        self.home = home
        self.settings = home.settings
        self._received: queue.Queue[Received | None] = queue.Queue()
        self._resend_due = threading.Event()  # set on every connect and unconfirmed publish
        self._writer: threading.Thread | None = None
        self.metrics = Metrics(broker_connected=lambda: self.link.connected)
        self.http = ArtifactServer(
            home.store,
            registry_token_check(home.engine),
            host=self.settings.http_host,
            port=self.settings.http_port,
            prefix=urlsplit(self.settings.artifact_url).path or "/",
            metrics=self.metrics,
            metrics_text=lambda: self.metrics.render(home.engine),
            tls=_artifact_tls(home),
            web=FleetWeb(
                home, secure_cookie=urlsplit(self.settings.artifact_url).scheme == "https"
            ),
        )
        prefix = self.settings.topic_prefix
        self.link = MqttLink(
            shared.broker_endpoint(self.settings.broker_url),
            # events sent while we were down are kept for us, and acknowledged only once stored
            Session(client_id=client_id, persistent=True, manual_ack=True),
            subscriptions=[(shared.fleet_topic(ch, prefix), 1) for ch in _INGESTED],
            on_message=self._received.put,
            on_connected=self._resend_due.set,
            tls_ca=home.tls_ca(),
        )
        limit = RateLimit(
            self.settings.ingest_rate_per_device, self.settings.ingest_burst_per_device
        )
        self.inbox = Inbox(home, self.metrics, self.link.ack, DeviceRates(limit))
        self.jobs = [
            Job("resend", dispatch_interval_s, self._resend),
            Job("trust", dispatch_interval_s, self._send_trust),
            Job("rollouts", dispatch_interval_s, self._advance),
            Job("dispatch", dispatch_interval_s, self._dispatch),
        ]

    # -- lifecycle -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then finish what was received and sent, and return."""
        self.http.start()
        log.info("artifact server on http://%s:%d", self.settings.http_host, self.http.port)
        self._writer = threading.Thread(target=self._write_loop, name="ingest", daemon=True)
        self._writer.start()
        self.link.start()
        try:
            run_jobs(self.jobs, stop)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        log.info("stopping")
        # Write and acknowledge what has arrived; anything after the marker stays unacknowledged
        # and the broker delivers it again next time (persistent session).
        self._received.put(None)
        if self._writer:
            self._writer.join(timeout=30)
        self.link.close()
        self.http.stop()
        log.info("stopped")

    # -- jobs ------------------------------------------------------------------------

    def _resend(self) -> None:
        """Send again what may never have reached the broker (see ``resend_unconfirmed``)."""
        if not (self.link.connected and self._resend_due.is_set()):
            return
        self._resend_due.clear()  # first: a reconnect while resending asks for another round
        try:
            trust = resend_trust_updates(self.home, self._publish)
            resent = resend_unconfirmed(self.home, self._publish)
        except EdgefleetError:
            self._resend_due.set()
            raise
        if trust:
            self.metrics.inc("edgefleet_trust_updates_resent_total", len(trust))
        if resent:
            self.metrics.inc("edgefleet_deployments_resent_total", len(resent))
            log.info("resent %d unconfirmed deployment(s) after connecting", len(resent))

    def _send_trust(self) -> None:
        if not self.link.connected or self._resend_due.is_set():
            return
        sent = send_trust_updates(self.home, self._publish)
        if sent:
            self.metrics.inc("edgefleet_trust_updates_sent_total", len(sent))

    def _advance(self) -> None:
        """Move every active rollout on from the registry (waves, gates, aborts)."""
        for transition in advance_rollouts(self.home):
            self.metrics.inc("edgefleet_rollout_transitions_total", 1, state=transition.after)

    def _dispatch(self) -> None:
        # pending rows wait until the unconfirmed ones went out: lower sequences first
        if not self.link.connected or self._resend_due.is_set():
            return
        sent = dispatch_pending(self.home, self._publish)
        if sent:
            self.metrics.inc("edgefleet_deployments_dispatched_total", len(sent))

    def _publish(self, topic: str, payload: bytes) -> None:
        try:
            self.link.publish(topic, payload)
        except BrokerError:
            self._resend_due.set()  # the row keeps its bytes until the broker acknowledges
            raise

    # -- ingest ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        done = False
        while not done:
            first = self._received.get()
            batch: list[Received] = []
            if first is None:
                done = True
            else:
                batch.append(first)
            while len(batch) < _BATCH:
                try:
                    item = self._received.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
            if batch:
                self._write(batch)

    def _write(self, batch: list[Received]) -> None:
        self.inbox.write(batch)


def _artifact_tls(home: Home) -> ssl.SSLContext | None:
    """HTTPS for an ``https://`` artifact_url, with the certificate `edgefleet tls init` made."""
    if urlsplit(home.settings.artifact_url).scheme != "https":
        return None
    tls = home.tls()
    if tls is None:
        raise ConfigError(
            "artifact_url is https:// but this home has no certificate: run `edgefleet tls init`"
        )
    return server_tls_context(tls.server_cert, tls.server_key)


def serve(home: Home, stop: threading.Event) -> None:
    Daemon(home).run(stop)
