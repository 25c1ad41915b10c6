"""The device agent: wires storage, lifecycle actions, benchmarks and reporting, routes commands.

Its I/O comes in from outside: the artifact HTTP client and the MQTT link are
constructor parameters, built for production in one place (:meth:`Agent.from_config`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from functools import partial

import httpx

from edgefleet import shared
from edgefleet.shared import (
    BenchmarkCommand,
    BenchmarkOrder,
    DeployCommand,
    Manifest,
    PingCommand,
    RollbackCommand,
    RollbackOrder,
    SignedBlob,
    TrustCommand,
    TrustUpdate,
)
from edgefleet.shared.errors import EdgefleetError, InternalError, MessageError

from ._actions import LifecycleActions, check_rollback, load_stored
from ._benchmark import run_benchmark
from ._config import AgentConfig
from ._connections import AGENT_VERSION, artifact_client, broker_link, download_retry
from ._death_test import DeathTestPause
from ._fetch import ArtifactFetcher
from ._inbox import Inbox
from ._lifecycle import START, TERMINAL, DeploymentRecord, Interrupted, State, drive
from ._link import Inbound, Link
from ._reporting import Reporter
from ._retry import DownloadRetry
from ._serving import InferenceServer
from ._slot import ModelSlot
from ._store import AgentState, ServingRecord, StateStore
from ._telemetry import RequestStats, system_stats

log = logging.getLogger("edgefleet.agent")


class Agent:
    """One device's agent. It owns ``http`` and ``link`` once given them, and closes both;
    ``retry`` is the download retry policy (by default from the settings)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        http: httpx.Client,
        link: Link,
        retry: DownloadRetry | None = None,
        death_test_pause: DeathTestPause | None = None,
    ) -> None:
        self.config = config
        self.store = StateStore(config.state_dir)
        self.state: AgentState = self.store.load()
        self.configured_keys = config.keyring()
        self.keyring = self.state.trust.keyring(self.configured_keys)
        self.slot = ModelSlot()
        self.stats = RequestStats()
        self.server = InferenceServer(
            self.slot, self.stats, host=config.inference_host, port=config.inference_port
        )
        self.http = http
        self.link = link
        self.stopping = threading.Event()
        self.inbox = Inbox(self.stopping)
        self._lock = threading.Lock()  # guards self.state against the status builder
        self.reporter = Reporter(
            device_id=config.device_id,
            profile=config.profile,
            topic_prefix=config.topic_prefix,
            agent_version=AGENT_VERSION,
            state=self.state,
            lock=self._lock,
            publish=link.publish,
        )
        self.fetcher = ArtifactFetcher(
            http, self.store, min_bytes_per_s=config.min_throughput_bytes_per_s
        )
        self.actions = LifecycleActions(
            store=self.store,
            state=self.state,
            lock=self._lock,
            slot=self.slot,
            fetcher=self.fetcher,
            retry=retry or download_retry(config),
            wait=partial(self.inbox.wait, take=self._take),  # commands are read while it waits
        )
        self._pause = death_test_pause
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_config(cls, config: AgentConfig, env: Mapping[str, str] | None = None) -> Agent:
        """The agent as it runs on a device: real HTTP client, real MQTT link."""
        return cls(
            config,
            http=artifact_client(config),
            link=broker_link(config),
            death_test_pause=DeathTestPause.from_env(os.environ if env is None else env),
        )

    # -- start and stop ------------------------------------------------------------

    def start(self) -> None:
        self._load_serving_model()
        self.server.start()
        self.link.start(
            on_message=self.inbox.put,  # the network thread only queues; the worker works
            birth=lambda: self.reporter.status(online=True),
            will=lambda: self.reporter.status(online=False),
        )
        for target, name in ((self._work, "worker"), (self._telemetry_loop, "telemetry")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "agent %s started: device=%s profile=%s serving=%s inference=%s",
            AGENT_VERSION,
            self.config.device_id,
            self.config.profile,
            self.state.active.model if self.state.active else "nothing",
            self.server.url,
        )

    def stop(self) -> None:
        self.stopping.set()
        self.inbox.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        self.link.stop(farewell=self.reporter.status(online=False))
        self.server.stop()
        self.http.close()
        log.info("agent stopped")

    def _load_serving_model(self) -> None:
        """Serve the last good model; if it is damaged on disk, the one before it."""
        for which in ("active", "previous"):
            record: ServingRecord | None = getattr(self.state, which)
            if record is None:
                continue
            try:
                self.slot.swap(load_stored(self.store, record.sha256, record))
                if which == "previous":
                    log.error("active model unusable; serving the previous one instead")
                    with self._lock:
                        self.state.active, self.state.previous = self.state.previous, None
                        self.store.save(self.state)
                return
            except EdgefleetError as exc:
                log.error("cannot load %s model %s: %s", which, record.model, exc)

    # -- the worker and the telemetry thread, each step under one guard -------------

    def _guarded(self, what: str, work: Callable[[], object]) -> Exception | None:
        """Run ``work``; an unexpected error (a bug, a full disk) is logged, never fatal."""
        try:
            work()
        except Exception as exc:
            log.exception("%s failed; the agent carries on", what)
            return exc
        return None

    def _work(self) -> None:
        self._guarded("resuming after a restart", self.resume)
        while not self.stopping.is_set():
            message = self.inbox.next()
            if message is None:
                return
            self._take(message)

    def _take(self, message: Inbound) -> None:
        """Handle one command, from the worker's loop or from a download's backoff wait, and
        acknowledge it, unless the wait set it aside to run once the waiting deployment ended."""
        try:
            with self.reporter.handling(message.payload):
                exc = self._guarded("command handling", partial(self.handle, message))
                if exc is not None:  # tell the controller, who would otherwise wait
                    why = f"{type(exc).__name__}: {exc}"
                    report = partial(self.reporter.rejection, "", InternalError.code, why)
                    self._guarded("reporting a failed command", report)
        finally:
            if not self.inbox.holds(message):
                message.ack()

    def _telemetry_loop(self) -> None:
        interval = self.config.telemetry_interval_s
        self._guarded("priming the CPU sampler", lambda: system_stats(self.config.state_dir))
        while not self.stopping.wait(interval):
            self._guarded("telemetry", lambda: self._publish_telemetry(interval))

    def _publish_telemetry(self, interval: float) -> None:
        self.reporter.telemetry(
            interval, models=self.stats.drain(), system=system_stats(self.config.state_dir)
        )

    # -- commands ------------------------------------------------------------------

    def resume(self) -> None:
        """Carry on with the deployment or rollback that was running when the agent stopped."""
        current = self.state.current
        if current is not None and current.state not in TERMINAL:
            log.warning(
                "resuming %s %s in state %s", current.kind, current.deployment_id, current.state
            )
            current.resumed = True
            self._run_lifecycle(current)

    def handle(self, message: Inbound) -> None:
        """Decode one command and act on it; what the worker does with each message. Every
        refusal names the command by the digest of its bytes (see ``Reporter.handling``)."""
        with self.reporter.handling(message.payload):
            self._handle(message)

    def _handle(self, message: Inbound) -> None:
        try:
            command = shared.decode(message.payload)
        except MessageError as exc:
            self.reporter.rejection("", exc.code, str(exc))
            return
        if isinstance(command, PingCommand):
            self.reporter.publish_status()
        elif isinstance(command, DeployCommand | RollbackCommand | BenchmarkCommand):
            self._handle_signed(command.signed, message)
        elif isinstance(command, TrustCommand):
            self._handle_trust(command.signed)
        else:
            self.reporter.rejection(
                "", MessageError.code, f"agents take no {command.kind!r} messages"
            )

    def _verified(self, blob: SignedBlob) -> shared.AnyDocument | None:
        """The document inside ``blob`` if a trusted, unrevoked key signed it; else report."""
        try:
            payload = shared.verify(blob, self.keyring, revoked=self.state.trust.revoked)
            return shared.parse_signed_document(payload)
        except MessageError as exc:
            self.reporter.rejection("", exc.code, str(exc))
            return None

    def _handle_trust(self, blob: SignedBlob) -> None:
        """Apply a trust update: persisted before it is answered, and only ever forwards."""
        doc = self._verified(blob)
        if doc is None:
            return
        if not isinstance(doc, TrustUpdate):
            self.reporter.rejection(
                "", MessageError.code, "a trust command must hold a trust update"
            )
            return
        trust = self.state.trust
        if trust.is_current(doc):
            log.info("duplicate delivery of trust update %s answered again", doc.update_id)
            self.reporter.trust(doc.update_id, doc.version, doc.key_ids(), trust.revoked)
            return
        try:
            after, keyring = trust.after(
                doc, blob, device_id=self.config.device_id, configured=self.configured_keys
            )
        except MessageError as exc:
            self.reporter.rejection(doc.update_id, exc.code, str(exc))
            return
        with self._lock:
            self.state.trust = after
            self.store.save(self.state)
        self.keyring = keyring
        log.info(
            "trust update %s applied: version %d, keys %s, revoked %s",
            doc.update_id, doc.version, sorted(keyring), after.revoked,
        )  # fmt: skip
        self.reporter.trust(doc.update_id, doc.version, doc.key_ids(), after.revoked)

    def _handle_signed(self, blob: SignedBlob, message: Inbound) -> None:
        doc = self._verified(blob)
        if doc is None:
            return
        if isinstance(doc, TrustUpdate):
            self.reporter.rejection(
                doc.update_id, MessageError.code, "a trust update must come in a trust command"
            )
            return
        doc_id = doc.benchmark_id if isinstance(doc, BenchmarkOrder) else doc.deployment_id
        if self.state.knows(doc_id):
            self._handle_known(doc, blob, doc_id)
            return
        try:
            shared.check_document(
                doc, blob, device_id=self.config.device_id, last_sequence=self.state.last_sequence
            )
            if isinstance(doc, RollbackOrder):  # refused before accepted: the sequence stays
                check_rollback(doc, self.state)
        except MessageError as exc:
            self.reporter.rejection(doc_id, exc.code, str(exc))
            return
        if isinstance(doc, BenchmarkOrder):
            with self._lock:
                self.state.remember(doc_id)
                self.store.save(self.state)
            run_benchmark(doc, self.fetcher, self.reporter)
            return
        waiting = self.inbox.hold(message, doc.kind, doc_id)
        if waiting is not None:  # accepted once the deployment it replaces has ended
            log.info(
                "%s %s supersedes %s, which waits to retry its download", doc.kind, doc_id, waiting
            )
            return
        record = DeploymentRecord(
            deployment_id=doc_id, kind=doc.kind, signed=blob, state=START[doc.kind]
        )
        with self._lock:
            # accepted: the sequence moves on before any work, so a replay is refused
            self.state.last_sequence = doc.sequence
            self.state.current = record
            self.state.remember(doc_id)
            self.store.save(self.state)
        message.ack()  # persisted: from here on the agent, not the broker, keeps the command
        log.info("accepted %s %s (sequence %d)", doc.kind, doc_id, doc.sequence)
        self.reporter.deployment(record)
        self._run_lifecycle(record)

    def _handle_known(self, doc: shared.AnyDocument, blob: SignedBlob, doc_id: str) -> None:
        """A command for a deployment this device took on before is never run twice.

        Sent again with a new sequence (the controller re-signs an order it never heard
        the end of), it is accepted, so the sequence moves on, and answered with how the
        deployment ended, or, while it still runs, with the status. Anything else (the
        QoS 1 duplicate of the first delivery) is ignored.
        """
        outcome = self.state.outcome(doc_id)
        answerable = outcome is not None or self.state.in_progress(doc_id)
        if not (answerable and isinstance(doc, Manifest | RollbackOrder) and self._new(doc, blob)):
            log.info("duplicate delivery of %s ignored", doc_id)
            return
        with self._lock:
            self.state.last_sequence = doc.sequence
            self.store.save(self.state)
        done = f"finished as {outcome.state}" if outcome is not None else "still running"
        log.info("%s sent again (sequence %d): %s, not run twice", doc_id, doc.sequence, done)
        if outcome is not None:
            self.reporter.outcome(outcome)
        self.reporter.publish_status()

    def _new(self, doc: Manifest | RollbackOrder, blob: SignedBlob) -> bool:
        """Whether the device would take ``doc`` now: for it, unexpired, a new sequence."""
        try:
            shared.check_document(
                doc, blob, device_id=self.config.device_id, last_sequence=self.state.last_sequence
            )
        except MessageError:
            return False
        return True

    # -- the lifecycle -------------------------------------------------------------

    def _run_lifecycle(self, record: DeploymentRecord) -> None:
        try:
            drive(record, self.actions.table(record), self._save_record, self.reporter.deployment)
        except Interrupted as stopped:
            log.info("%s; the next start resumes it", stopped)
            return
        finally:
            self.actions.forget_candidate()
            self.reporter.publish_status()
        if record.state is State.FAILED:
            log.error(
                "%s %s failed: [%s] %s",
                record.kind,
                record.deployment_id,
                record.error_code,
                record.error,
            )
        self.store.prune_models()  # keeps every file a record refers to

    def _save_record(self, record: DeploymentRecord) -> None:
        with self._lock:
            self.state.current = record
            if record.state in TERMINAL:  # kept to answer the command if it comes again
                self.state.finish(record)
            self.store.save(self.state)
        pause = self._pause
        if pause is not None and pause.state is record.state:
            log.warning("test hook: pausing %.0fs in %s", pause.seconds, record.state)
            self.stopping.wait(pause.seconds)
        self.reporter.publish_status()
