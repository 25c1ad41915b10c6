"""``edgefleet serve``: MQTT ingest, the jobs that send orders, and the artifact server.

Threads: paho's network loop (only queues what arrives), one ingest writer (decodes,
writes a batch per transaction, then acknowledges), the HTTP server, and the caller's
thread running the jobs on one clock until ``stop`` is set. The jobs, in order on every
tick: after a (re)connect, resend the commands the broker never acknowledged; then, once
nothing is left to resend (lower sequence numbers first), send pending trust updates; move
every active rollout on (start waves, judge gates, abort); then send pending deployments and
rollbacks (a device learns a new signing key before the first manifest it signs). Around
them, a cheap question to the registry (its reachability, for ``/healthz``) and the
daemon's heartbeat in the registry (so ``deploy`` and ``status`` know whether it is alive).
Every run is recorded in :class:`Health`.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

from edgefleet import shared
from edgefleet.shared import Channel
from edgefleet.shared.errors import BrokerError, ConfigError, EdgefleetError

from ..fleet import TelemetryRetention, record_heartbeat
from ..home import Home, Settings
from ..keys import resend_trust_updates, send_trust_updates
from ..mqtt import MqttLink, Received, Session
from ..registry import DaemonHeartbeat, current_version, utcnow
from ..rollout import (
    DISPATCH_BATCH,
    advance_rollouts,
    dispatch_pending,
    reconcile,
    resend_unconfirmed,
)
from ._access import registry_token_check
from ._health import REGISTRY_CHECK, Health
from ._http import ArtifactServer
from ._inbox import DeviceRates, Inbox, RateLimit
from ._metrics import Metrics
from ._web import FleetWeb
from ._wire import server_tls_context

log = logging.getLogger("edgefleet.controller.daemon")

CLIENT_ID = "edgefleet-controller"
_BATCH = 500
# Messages received and not yet written, at most; and how long a batch waits to fill up.
INGEST_QUEUE = 20_000
INGEST_LINGER_S = 0.05
_INGESTED = (Channel.STATUS, Channel.EVENTS, Channel.TELEMETRY)
HEARTBEAT_S = 5.0
REGISTRY_CHECK_S = 5.0
RECONCILE_S = 5.0
# One dispatch job keeps sending batches for at most this long, then lets the others run.
DISPATCH_FOR_S = 2.0
# How long the daemon waits for the broker's first answer before it serves HTTP, so the
# first /healthz tells how that attempt went; a broker that is down answers at once.
FIRST_ANSWER_WAIT_S = 5.0
# A job failing with the same message again is logged at debug level, but at error level
# at least this often.
REMIND_EVERY_S = 60.0


@dataclass
class Job:
    """Work the daemon does every ``every_s`` seconds, on the loop's one clock."""

    name: str
    every_s: float
    run: Callable[[], None]
    due_at: float = 0.0
    told_at: float = float("-inf")  # when its latest failure was logged at error level


def run_jobs(
    jobs: list[Job],
    stop: threading.Event,
    *,
    clock: Callable[[], float] = time.monotonic,
    health: Health | None = None,
) -> None:
    """Run each job when it is due, in list order, until ``stop`` is set, and record every
    run in ``health``. A job that raises an edgefleet error is logged and runs again at its
    next turn: at error level when it starts failing or its message changes (and every
    ``REMIND_EVERY_S`` while it goes on), at debug level in between."""
    health = health or Health()
    while not stop.is_set():
        now = clock()
        for job in jobs:
            if job.due_at <= now:
                _run(job, health, now)
                job.due_at = now + job.every_s
        next_due = min(job.due_at for job in jobs)
        stop.wait(max(next_due - clock(), 0.0))


def _run(job: Job, health: Health, now: float) -> None:
    try:
        job.run()
    except EdgefleetError as exc:
        before = health.job_failed(job.name, job.every_s, str(exc))
        again = before.failures > 0 and before.error == str(exc)
        if again and now - job.told_at < REMIND_EVERY_S:
            log.debug("%s: %s (%d failures in a row)", job.name, exc, before.failures + 1)
            return
        job.told_at = now
        suffix = f" ({before.failures + 1} failures in a row)" if again else ""
        log.error("%s: %s%s", job.name, exc, suffix)
        return
    before = health.job_ran(job.name, job.every_s)
    if before.failures:
        log.info("%s: working again after %d failure(s)", job.name, before.failures)


class Daemon:
    """``edgefleet serve``. Building it takes the HTTP port: a port that is taken (or any
    other reason it cannot listen) is a ``ConfigError`` naming the port and what to change."""

    def __init__(
        self,
        home: Home,
        *,
        dispatch_interval_s: float = 0.5,
        client_id: str = CLIENT_ID,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.home = home
        self.settings = home.settings
        self.client_id = client_id
        self.heartbeat_s = heartbeat_s
        self.started_at = utcnow()
        # bounded: when ingest falls behind, paho's network thread waits to hand over the
        # next message, so the broker holds the backlog (our persistent session) rather than
        # the daemon's memory
        self._received: queue.Queue[Received | None] = queue.Queue(maxsize=INGEST_QUEUE)
        self._resend_due = threading.Event()  # set on every connect and unconfirmed publish
        self._writer: threading.Thread | None = None
        self._serving = False  # the HTTP server's thread runs
        self.metrics = Metrics(broker_connected=lambda: self.link.connected)
        prefix = self.settings.topic_prefix
        endpoint = shared.broker_endpoint(self.settings.broker_url)
        self.link = MqttLink(
            endpoint,
            # events sent while we were down are kept for us, and acknowledged only once stored
            Session(client_id=client_id, persistent=True, manual_ack=True),
            subscriptions=[(shared.fleet_topic(ch, prefix), 1) for ch in _INGESTED],
            on_message=self._received.put,
            on_connected=self._resend_due.set,
            tls_ca=home.tls_ca(),
        )
        self.health = Health(self.link, broker_url=endpoint.public_url)
        self.health.register_gauge(self.metrics.registry)
        limit = RateLimit(
            self.settings.ingest_rate_per_device, self.settings.ingest_burst_per_device
        )
        self.inbox = Inbox(home, self.metrics, self.link.ack, DeviceRates(limit))
        self.jobs = [
            Job(REGISTRY_CHECK, REGISTRY_CHECK_S, self._check_registry),
            Job("resend", dispatch_interval_s, self._resend),
            Job("trust", dispatch_interval_s, self._send_trust),
            Job("rollouts", dispatch_interval_s, self._advance),
            Job("dispatch", dispatch_interval_s, self._dispatch),
            Job("reconcile", RECONCILE_S, self._reconcile),
            Job("heartbeat", heartbeat_s, self._beat),
            Job("retention", 60.0, TelemetryRetention(home)),  # hourly; 5 s a call at most
        ]
        tls = _artifact_tls(home)
        web = FleetWeb(home, secure_cookie=urlsplit(self.settings.artifact_url).scheme == "https")
        try:
            self.http = ArtifactServer(
                home.store,
                registry_token_check(home.engine),
                host=self.settings.http_host,
                port=self.settings.http_port,
                prefix=urlsplit(self.settings.artifact_url).path or "/",
                metrics=self.metrics,
                metrics_text=lambda: self.metrics.render(home.engine),
                tls=tls,
                web=web,
                health=self.health.answer,
            )
        except OSError as exc:
            raise ConfigError(_cannot_listen(self.settings, exc)) from exc

    # -- lifecycle -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then finish what was received and sent, and return.

        The broker may be down: the link keeps trying, and ``/healthz`` says why it is
        unhealthy meanwhile."""
        self._writer = threading.Thread(target=self._write_loop, name="ingest", daemon=True)
        self._writer.start()
        try:
            log.info("connecting to the broker at %s", self.health.broker_url)
            self.link.start()
            if not self.link.wait_settled(FIRST_ANSWER_WAIT_S):
                log.warning("no answer from the broker at %s yet", self.health.broker_url)
            self.http.start()
            self._serving = True
            log.info("artifact server on http://%s:%d", self.settings.http_host, self.http.port)
            run_jobs(self.jobs, stop, health=self.health)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        log.info("stopping")
        # Write and acknowledge what has arrived; anything after the marker stays unacknowledged
        # and the broker delivers it again next time (persistent session).
        try:
            self._received.put(None, timeout=30)
        except queue.Full:
            log.warning("ingest is not keeping up; stopping without writing its backlog")
        if self._writer:
            self._writer.join(timeout=30)
        self.link.close()
        try:
            self._beat(stopped=True)
        except EdgefleetError as exc:
            log.warning("could not record the stop in the registry: %s", exc)
        if self._serving:
            self.http.stop()
        else:  # shutdown() would wait for a serve_forever that never ran
            self.http.httpd.server_close()
        log.info("stopped")

    # -- jobs ------------------------------------------------------------------------

    def _check_registry(self) -> None:
        """A cheap question (the schema version) that fails when the registry is away."""
        current_version(self.home.engine)

    def _beat(self, *, stopped: bool = False) -> None:
        """Write the daemon's heartbeat (see ``fleet.daemon_state``); the last one on a
        clean stop, with ``stopped_at``."""
        now = utcnow()
        record_heartbeat(
            self.home,
            DaemonHeartbeat(
                name=self.client_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=_version(),
                every_s=self.heartbeat_s,
                started_at=self.started_at,
                beat_at=now,
                stopped_at=now if stopped else None,
                broker_connected=self.link.connected,
                detail="" if stopped else self.health.summary(),
            ),
        )

    def _resend(self) -> None:
        """Send again what may never have reached the broker (see ``resend_unconfirmed``)."""
        if not (self.link.connected and self._resend_due.is_set()):
            return
        self._resend_due.clear()  # first: a reconnect while resending asks for another round
        try:
            trust = resend_trust_updates(self.home, self._publish)
            resent = resend_unconfirmed(
                self.home, self._publish, publish_many=self.link.publish_many
            )
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
        """Batches of pending orders until none is left (or DISPATCH_FOR_S has passed)."""
        started = time.monotonic()
        while time.monotonic() - started < DISPATCH_FOR_S:
            # pending rows wait until the unconfirmed ones went out: lower sequences first
            if not self.link.connected or self._resend_due.is_set():
                return
            try:
                sent = dispatch_pending(
                    self.home, self._publish, publish_many=self.link.publish_many
                )
            except BrokerError:
                self._resend_due.set()  # the rows keep their bytes until acknowledged
                raise
            if sent:
                self.metrics.inc("edgefleet_deployments_dispatched_total", len(sent))
            if len(sent) < DISPATCH_BATCH:
                return

    def _reconcile(self) -> None:
        """Ask devices about orders with no news; send again what never reached them."""
        if not self.link.connected:
            return
        done = reconcile(self.home, self._publish, grace_s=self.settings.reconcile_after_s)
        if done.pinged:
            self.metrics.inc("edgefleet_reconcile_pings_total", len(done.pinged))
        if done.resent:
            self.metrics.inc("edgefleet_reconcile_resends_total", len(done.resent))

    def _publish(self, topic: str, payload: bytes) -> None:
        try:
            self.link.publish(topic, payload)
        except BrokerError:
            self._resend_due.set()  # the row keeps its bytes until the broker acknowledges
            raise

    # -- ingest ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Batches from the queue into the registry: each batch waits up to INGEST_LINGER_S
        after its first message for more (at most _BATCH), so a steady trickle is written
        in a few transactions a second rather than one per message."""
        done = False
        while not done:
            first = self._received.get()
            batch: list[Received] = []
            if first is None:
                done = True
            else:
                batch.append(first)
            deadline = time.monotonic() + INGEST_LINGER_S
            while not done and len(batch) < _BATCH:
                try:
                    item = self._received.get(timeout=max(0.0, deadline - time.monotonic()))
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


def _cannot_listen(settings: Settings, exc: OSError) -> str:
    where = f"{settings.http_host}:{settings.http_port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is already in use (another `edgefleet serve`?);"
            f" stop what listens there, or set http_port in {settings.config_path} to a free"
            " port (and artifact_url to match)"
        )
    return (
        f"cannot listen on {where}: {exc.strerror or exc}; check http_host and http_port"
        f" in {settings.config_path}"
    )


def _version() -> str:
    try:
        return version("edgefleet-controller")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def serve(home: Home, stop: threading.Event) -> None:
    Daemon(home).run(stop)
