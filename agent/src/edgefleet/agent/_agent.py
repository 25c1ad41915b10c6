"""The device agent: takes commands, runs deployments through the lifecycle, serves, reports."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable

import httpx

from edgefleet import shared
from edgefleet.shared import (
    BenchmarkCommand,
    BenchmarkOrder,
    DeployCommand,
    EventMessage,
    Manifest,
    PingCommand,
    RollbackCommand,
    SignedBlob,
    StatusMessage,
    TelemetryMessage,
)
from edgefleet.shared.errors import (
    ArtifactError,
    ArtifactMissing,
    ChecksumMismatch,
    DownloadError,
    EdgefleetError,
    InternalError,
    MessageError,
    ModelError,
    NoCandidate,
    NothingToRollBack,
    SmokeTestFailed,
)

from ._config import AgentConfig
from ._download import download
from ._lifecycle import START, TERMINAL, DeploymentRecord, Outcome, State, drive
from ._mqtt import BrokerSettings, Inbound, MqttLink, Outbound
from ._runtime import LoadedModel, benchmark, check_signature, load_model, smoke_test
from ._serving import InferenceServer
from ._slot import ModelSlot
from ._store import AgentState, ServingRecord, StateStore
from ._telemetry import RequestStats, system_stats

log = logging.getLogger("edgefleet.agent")

AGENT_VERSION = "0.1.0"
# Death tests stop the agent in a named state: EDGEFLEET_AGENT_PAUSE_IN=loading:30
PAUSE_ENV = "EDGEFLEET_AGENT_PAUSE_IN"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.keyring = config.keyring()
        self.store = StateStore(config.state_dir)
        self.state: AgentState = self.store.load()
        self.slot = ModelSlot()
        self.stats = RequestStats()
        self.server = InferenceServer(
            self.slot, self.stats, host=config.inference_host, port=config.inference_port
        )
        host, port, tls = config.broker
        self.link = MqttLink(
            BrokerSettings(
                host=host,
                port=port,
                client_id=config.device_id,
                tls=tls,
                ca_file=config.broker_ca_file,
                username=config.broker_username,
                password=config.broker_password,
                keepalive_s=config.keepalive_s,
                session_expiry_s=config.session_expiry_s,
                reconnect_min_s=config.reconnect_min_s,
                reconnect_max_s=config.reconnect_max_s,
            ),
            subscriptions=[shared.command_topic(config.device_id, config.topic_prefix)],
            on_message=self._on_message,
            birth=lambda: self._status_message(online=True),
            will=lambda: self._status_message(online=False),
        )
        headers = {"User-Agent": f"edgefleet-agent/{AGENT_VERSION}"}
        if config.artifact_token:
            headers["Authorization"] = f"Bearer {config.artifact_token}"
        self.http = httpx.Client(
            base_url=config.artifact_base_url,
            headers=headers,
            timeout=httpx.Timeout(
                config.download_timeout_s, connect=min(10.0, config.download_timeout_s)
            ),
            follow_redirects=False,
        )
        self.inbox: queue.Queue[Inbound | None] = queue.Queue()
        self.stopping = threading.Event()
        self._candidate: LoadedModel | None = None
        self._lock = threading.Lock()  # guards self.state against the status builder
        self._pause = _parse_pause(os.environ.get(PAUSE_ENV, ""))
        self._threads: list[threading.Thread] = []

    # -- start and stop ------------------------------------------------------------

    def start(self) -> None:
        self._load_serving_model()
        self.server.start()
        self.link.start()
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
        self.link.stop(farewell=self._status_message(online=False))
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
                self.slot.swap(self._load(record.sha256, record))
                if which == "previous":
                    log.error("active model unusable; serving the previous one instead")
                    with self._lock:
                        self.state.active, self.state.previous = self.state.previous, None
                        self.store.save(self.state)
                return
            except EdgefleetError as exc:
                log.error("cannot load %s model %s: %s", which, record.model, exc)

    def _load(self, sha256: str, record: ServingRecord | Manifest) -> LoadedModel:
        path = self.store.model_path(sha256)
        if not path.exists() or shared.sha256_file(path) != sha256:
            raise ChecksumMismatch(f"stored model {path.name} is missing or damaged")
        return load_model(
            path,
            ref=record.model,
            deployment_id=record.deployment_id,
            sha256=sha256,
            runtime=record.runtime,
        )

    # -- inbound commands ----------------------------------------------------------

    def _on_message(self, message: Inbound) -> None:
        # The network thread only queues; all work happens on the worker.
        self.inbox.put(message)

    def _work(self) -> None:
        current = self.state.current
        if current is not None and current.state not in TERMINAL:
            log.warning(
                "resuming %s %s in state %s", current.kind, current.deployment_id, current.state
            )
            current.resumed = True
            self._run_lifecycle(current)
        while not self.stopping.is_set():
            message = self.inbox.get()
            if message is None:
                return
            try:
                self._handle(message)
            except Exception as exc:  # a bug in one command must not stop the agent
                log.exception("command handling failed")
                self._report_rejection("", InternalError.code, f"{type(exc).__name__}: {exc}")
            finally:
                message.ack()

    def _handle(self, message: Inbound) -> None:
        try:
            command = shared.decode(message.payload)
        except MessageError as exc:
            self._report_rejection("", exc.code, str(exc))
            return
        if isinstance(command, PingCommand):
            self._publish_status()
        elif isinstance(command, DeployCommand | RollbackCommand | BenchmarkCommand):
            self._handle_signed(command.signed, message.ack)
        else:
            self._report_rejection(
                "", MessageError.code, f"agents take no {command.kind!r} messages"
            )

    def _handle_signed(self, blob: SignedBlob, ack: Callable[[], None]) -> None:
        try:
            doc = shared.parse_signed_document(shared.verify(blob, self.keyring))
        except MessageError as exc:
            self._report_rejection("", exc.code, str(exc))
            return
        doc_id = doc.benchmark_id if isinstance(doc, BenchmarkOrder) else doc.deployment_id
        if self.state.knows(doc_id):
            log.info("duplicate delivery of %s ignored", doc_id)
            return
        try:
            shared.check_document(
                doc, blob, device_id=self.config.device_id, last_sequence=self.state.last_sequence
            )
        except MessageError as exc:
            self._report_rejection(doc_id, exc.code, str(exc))
            return
        if isinstance(doc, BenchmarkOrder):
            with self._lock:
                self.state.remember(doc_id)
                self.store.save(self.state)
            self._run_benchmark(doc)
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
        ack()  # persisted: from here on the agent, not the broker, keeps the command
        log.info("accepted %s %s (sequence %d)", doc.kind, doc_id, doc.sequence)
        self._report(record)
        self._run_lifecycle(record)

    # -- the lifecycle -------------------------------------------------------------

    def _run_lifecycle(self, record: DeploymentRecord) -> None:
        doc = shared.parse_signed_document(record.signed.payload_bytes())
        actions: dict[State, Callable[[DeploymentRecord], Outcome]]
        if isinstance(doc, Manifest):
            actions = {
                State.DOWNLOADING: lambda r: self._download(r, doc),
                State.VERIFYING: lambda r: self._verify(r, doc),
                State.LOADING: lambda r: self._load_candidate(r, doc),
                State.TESTING: lambda r: self._test_candidate(r, doc),
                State.SWITCHING: lambda r: self._switch(r, doc),
            }
        else:
            actions = {State.ROLLING_BACK: self._roll_back}
        try:
            drive(record, actions, self._save_record, self._report)
        finally:
            self._candidate = None
            self._publish_status()
        if record.state is State.FAILED:
            log.error(
                "%s %s failed: [%s] %s",
                record.kind,
                record.deployment_id,
                record.error_code,
                record.error,
            )
        self._prune()

    def _save_record(self, record: DeploymentRecord) -> None:
        with self._lock:
            self.state.current = record
            self.store.save(self.state)
        self._maybe_pause(record.state)
        self._publish_status()

    def _download(self, record: DeploymentRecord, doc: Manifest) -> Outcome:
        artifact = doc.artifact
        if self.store.model_path(artifact.sha256).exists():
            return Outcome.SUCCESS  # already on disk (a redeploy); VERIFYING re-checks it
        start = time.monotonic()
        try:
            download(
                self.http,
                artifact.url,
                self.store.part_path(artifact.sha256),
                size=artifact.size,
                min_bytes_per_s=self.config.min_throughput_bytes_per_s,
            )
        except DownloadError as exc:
            record.attempts += 1
            if record.attempts >= self.config.download_attempts:
                return record.fail(exc.code, f"{exc} (gave up after {record.attempts} attempts)")
            record.error_code, record.error = exc.code, str(exc)
            self.stopping.wait(self.config.download_retry_s * record.attempts)
            return Outcome.RETRY
        except ArtifactError as exc:
            return record.fail(exc.code, str(exc))
        record.timings_ms["download"] = _ms_since(start)
        return Outcome.SUCCESS

    def _verify(self, record: DeploymentRecord, doc: Manifest) -> Outcome:
        artifact = doc.artifact
        final = self.store.model_path(artifact.sha256)
        source = final if final.exists() else self.store.part_path(artifact.sha256)
        start = time.monotonic()
        try:
            size = source.stat().st_size
        except OSError:
            return record.fail(ArtifactMissing.code, "the downloaded file is gone")
        digest = shared.sha256_file(source)
        if size != artifact.size or digest != artifact.sha256:
            source.unlink(missing_ok=True)
            return record.fail(
                ChecksumMismatch.code,
                f"artifact has {size} bytes and sha256 {digest[:12]}…, "
                f"manifest says {artifact.size} bytes and {artifact.sha256[:12]}…",
            )
        if source != final:
            os.replace(source, final)
        record.timings_ms["verify"] = _ms_since(start)
        return Outcome.SUCCESS

    def _load_candidate(self, record: DeploymentRecord, doc: Manifest) -> Outcome:
        start = time.monotonic()
        try:
            candidate = self._load(doc.artifact.sha256, doc)
            check_signature(candidate, doc.io)
        except EdgefleetError as exc:
            return record.fail(exc.code, str(exc))
        self._candidate = candidate
        record.timings_ms["load"] = _ms_since(start)
        return Outcome.SUCCESS

    def _test_candidate(self, record: DeploymentRecord, doc: Manifest) -> Outcome:
        candidate = self._candidate
        if candidate is None:  # only reachable if a resume skipped LOADING; treat as failed
            return record.fail(NoCandidate.code, "no candidate model in memory to test")
        start = time.monotonic()
        try:
            smoke_test(candidate, doc.smoke_test)
            if doc.runtime.benchmark_runs:
                record.details.update(
                    benchmark(candidate, doc.smoke_test.inputs, doc.runtime.benchmark_runs)
                )
        except ModelError as exc:
            return record.fail(exc.code, str(exc))
        except Exception as exc:  # ORT errors during the benchmark are the model's fault
            return record.fail(SmokeTestFailed.code, f"{type(exc).__name__}: {exc}")
        record.timings_ms["test"] = _ms_since(start)
        return Outcome.SUCCESS

    def _switch(self, record: DeploymentRecord, doc: Manifest) -> Outcome:
        candidate = self._candidate
        if candidate is None:
            # resumed after a crash past the tests: the file passed them, load it again
            try:
                candidate = self._load(doc.artifact.sha256, doc)
            except EdgefleetError as exc:
                return record.fail(exc.code, str(exc))
        new = ServingRecord(
            model=doc.model,
            deployment_id=doc.deployment_id,
            sha256=doc.artifact.sha256,
            runtime=doc.runtime,
        )
        with self._lock:
            if self.state.active is None or self.state.active.deployment_id != new.deployment_id:
                self.state.previous = self.state.active
            self.state.active = new
            self.slot.swap(candidate)
        return Outcome.SUCCESS

    def _roll_back(self, record: DeploymentRecord) -> Outcome:
        target = self.state.previous
        if target is None:
            return record.fail(NothingToRollBack.code, "there is no previous model on this device")
        try:
            model = self._load(target.sha256, target)
        except EdgefleetError as exc:
            return record.fail(exc.code, f"previous model unusable: {exc}")
        with self._lock:
            self.state.active, self.state.previous = target, self.state.active
            self.slot.swap(model)
        record.details["model"] = str(target.model)
        return Outcome.SUCCESS

    def _run_benchmark(self, order: BenchmarkOrder) -> None:
        """Measure a candidate without serving it; no state, so nothing to resume."""
        artifact = order.artifact
        part = self.store.part_path(artifact.sha256)
        path = self.store.model_path(artifact.sha256)
        keep = path.exists()
        self._emit(order.benchmark_id, State.BENCHMARKING)
        try:
            if not keep:
                download(
                    self.http,
                    artifact.url,
                    part,
                    size=artifact.size,
                    min_bytes_per_s=self.config.min_throughput_bytes_per_s,
                )
                if shared.sha256_file(part) != artifact.sha256:
                    raise ChecksumMismatch("benchmark artifact does not match its sha256")
                os.replace(part, path)
            model = load_model(
                path,
                ref=order.model,
                deployment_id=order.benchmark_id,
                sha256=artifact.sha256,
                runtime=order.runtime,
            )
            check_signature(model, order.io)
            result = benchmark(model, order.sample, order.runs)
        except EdgefleetError as exc:
            self._emit(
                order.benchmark_id,
                State.BENCHMARK_FAILED,
                ok=False,
                code=exc.code,
                message=str(exc),
            )
            return
        finally:
            if not keep:
                part.unlink(missing_ok=True)
                path.unlink(missing_ok=True)
        self._emit(
            order.benchmark_id, State.BENCHMARKED, details={**result, "model": str(order.model)}
        )

    def _prune(self) -> None:
        keep = {r.sha256 for r in (self.state.active, self.state.previous) if r}
        self.store.prune_models(keep)

    # -- reporting -----------------------------------------------------------------

    def _report(self, record: DeploymentRecord) -> None:
        failed = record.state is State.FAILED
        self._emit(
            record.deployment_id,
            record.state,
            ok=not failed,
            code=record.error_code,
            message=record.error or "",
            timings=record.timings_ms,
            details=record.details,
        )

    def _report_rejection(self, deployment_id: str, code: str, message: str) -> None:
        self._emit(deployment_id, State.REJECTED, ok=False, code=code, message=message)

    def _emit(
        self,
        deployment_id: str,
        state: State,
        *,
        ok: bool = True,
        code: str | None = None,
        message: str = "",
        timings: dict[str, float] | None = None,
        details: dict[str, float | int | str | None] | None = None,
    ) -> None:
        event = EventMessage(
            device_id=self.config.device_id,
            deployment_id=deployment_id,
            state=state,
            ok=ok,
            error_code=code,
            message=message[:2000],
            timings_ms=dict(timings or {}),
            details=dict(details or {}),
        )
        line = f"event {state} deployment={deployment_id or '-'}"
        if code:
            line += f" code={code} {message[:300]}"
        (log.info if ok else log.warning)(line)
        self.link.publish(
            Outbound(
                shared.events_topic(self.config.device_id, self.config.topic_prefix),
                shared.encode(event),
            )
        )

    def _status_message(self, online: bool) -> Outbound:
        with self._lock:
            current = self.state.current
            status = StatusMessage(
                device_id=self.config.device_id,
                online=online,
                agent_version=AGENT_VERSION,
                profile=self.config.profile,
                state=current.state if current else State.IDLE,
                deployment_id=current.deployment_id if current else None,
                active=self.state.active.public() if self.state.active else None,
                previous=self.state.previous.public() if self.state.previous else None,
                last_sequence=self.state.last_sequence,
            )
        return Outbound(
            shared.status_topic(self.config.device_id, self.config.topic_prefix),
            shared.encode(status),
            retain=True,
        )

    def _publish_status(self) -> None:
        self.link.publish(self._status_message(online=True))

    def _telemetry_loop(self) -> None:
        interval = self.config.telemetry_interval_s
        topic = shared.telemetry_topic(self.config.device_id, self.config.topic_prefix)
        system_stats(self.config.state_dir)  # prime the CPU sampler
        while not self.stopping.wait(interval):
            message = TelemetryMessage(
                device_id=self.config.device_id,
                interval_s=interval,
                models=self.stats.drain(),
                system=system_stats(self.config.state_dir),
            )
            self.link.publish(Outbound(topic, shared.encode(message), qos=0))

    def _maybe_pause(self, state: State) -> None:
        if self._pause and self._pause[0] == state.value:
            log.warning("pausing %.0fs in %s (%s is set)", self._pause[1], state, PAUSE_ENV)
            self.stopping.wait(self._pause[1])


def _parse_pause(text: str) -> tuple[str, float] | None:
    if not text:
        return None
    state, _, seconds = text.partition(":")
    try:
        return state, float(seconds or 30)
    except ValueError:
        return None


def _ms_since(start: float) -> float:
    return round((time.monotonic() - start) * 1000.0, 3)
