"""Simulated devices for fleet-scale benchmarks: each speaks the real protocol (its own MQTT
session, retained status with a last will, signed manifests verified with the controller's
public key, events, telemetry) without downloading or loading a model.

Connection model: one MQTT connection per device, as a real fleet has, so the broker and
the daemon see 10,000 sessions, 10,000 retained statuses and 10,000 command topics. Each
worker process drives a few thousand paho clients from one thread through paho's external
event loop (``on_socket_open``/``on_socket_register_write`` feed a ``selectors`` epoll;
``loop_read``/``loop_write`` when a socket is ready, ``loop_misc`` once a second for
keep-alives). A paho client without ``loop_start`` holds one socket and no thread, so 2,500
devices cost one process, one thread and 2,500 file descriptors, and four processes reach
10,000 on this 2-core host; a few multiplexing connections would have hidden exactly the
per-session costs the benchmark is meant to see.

A device verifies every command like the agent does (signature with ``shared.verify``
against the keys of its ``agent.toml``, then ``parse_signed_document`` and
``check_document``: device, expiry, sequence), refuses what the agent would refuse, and
answers a deployment with the agent's messages in the agent's order (an event per state
entered, the retained status each time the state is saved), with each state lasting what
``SimTimings`` says. Every command received is noted (``Receipt``), so a benchmark can
prove none came twice.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from edgefleet import shared
from edgefleet.shared import (
    DeployCommand,
    DeviceState,
    EventMessage,
    Manifest,
    ModelStats,
    PingCommand,
    RollbackCommand,
    RollbackOrder,
    ServingModel,
    SignedBlob,
    StatusMessage,
    SystemStats,
    TelemetryMessage,
)
from edgefleet.shared.errors import MessageError, NothingToRollBack, RollbackMismatch

log = logging.getLogger("edgefleet.harness.simfleet")

AGENT_VERSION = "0.1.0-sim"
# the agent's lifecycle of a deployment, in order; each state's action then the next state
DEPLOY_STEPS = (
    DeviceState.DOWNLOADING,
    DeviceState.VERIFYING,
    DeviceState.LOADING,
    DeviceState.TESTING,
    DeviceState.SWITCHING,
)
_TIMING_KEYS = {
    DeviceState.DOWNLOADING: "download",
    DeviceState.VERIFYING: "verify",
    DeviceState.LOADING: "load",
    DeviceState.TESTING: "test",
}
# a latency histogram as the digits model shows on a Pi: a few busy buckets around 2-8 ms
_COUNTS = [0] * shared.N_BUCKETS
_COUNTS[26:32] = [5, 20, 40, 20, 10, 5]
_HISTOGRAM = shared.LatencyHistogram(_COUNTS)

Send = Callable[[str, bytes, int, bool], None]  # topic, payload, qos, retain
Later = Callable[[float, Callable[[], None]], None]  # seconds from now, then call


@dataclass(frozen=True)
class SimTimings:
    """How long each state of a deployment lasts on a simulated device, in seconds; each
    drawn uniformly within ``jitter`` (a fraction) either side. The defaults are a small
    model on a Pi: a 100 KB download, a sha256, a session built, a smoke test, and the
    short on-device benchmark before the switch."""

    downloading: float = 0.15
    verifying: float = 0.01
    loading: float = 0.05
    testing: float = 0.02
    switching: float = 0.1
    rolling_back: float = 0.05
    jitter: float = 0.5

    def of(self, state: DeviceState, rng: random.Random) -> float:
        base = float(getattr(self, state.value))
        return max(0.0, base * (1 + rng.uniform(-self.jitter, self.jitter)))


class Receipt(NamedTuple):
    """One command as it arrived: its deployment id and sequence as signed (empty, 0 when
    unreadable), the sha256 of its bytes (a QoS 1 redelivery has the same, an order sent
    again re-signed has another), and when (the device's wall clock)."""

    deployment_id: str
    sequence: int
    sha256: str
    kind: str
    at: float


class SimDevice:
    """One simulated device's protocol logic. ``send`` publishes, ``later`` schedules; both
    come from the event loop that owns the device's MQTT client."""

    def __init__(
        self,
        device_id: str,
        keyring: dict[str, object],
        *,
        profile: str,
        prefix: str,
        send: Send,
        later: Later,
        timings: SimTimings,
        rng: random.Random,
    ) -> None:
        self.device_id = device_id
        self.keyring = keyring
        self.profile = profile
        self.prefix = prefix
        self.send = send
        self.later = later
        self.timings = timings
        self.rng = rng
        self.last_sequence = 0
        self.active: ServingModel | None = None
        self.previous: ServingModel | None = None
        self.current: tuple[str, DeviceState] | None = None  # deployment id, state
        self.finished: dict[str, DeviceState] = {}  # deployment id -> how it ended
        self.received: list[Receipt] = []
        self.committed_at: dict[str, float] = {}  # deployment id -> wall clock

    # -- what the device says --------------------------------------------------------

    def status(self, online: bool = True) -> bytes:
        current = self.current
        return shared.encode(
            StatusMessage(
                device_id=self.device_id,
                online=online,
                agent_version=AGENT_VERSION,
                profile=self.profile,
                state=current[1] if current else DeviceState.IDLE,
                deployment_id=current[0] if current else None,
                active=self.active,
                previous=self.previous,
                last_sequence=self.last_sequence,
            )
        )

    @property
    def status_topic(self) -> str:
        return shared.status_topic(self.device_id, self.prefix)

    @property
    def command_topic(self) -> str:
        return shared.command_topic(self.device_id, self.prefix)

    def publish_status(self) -> None:
        self.send(self.status_topic, self.status(), 1, True)

    def event(
        self,
        deployment_id: str,
        state: DeviceState,
        *,
        code: str | None = None,
        message: str = "",
        timings: dict[str, float] | None = None,
        details: dict[str, float | int | str | None] | None = None,
    ) -> None:
        ok = state not in (DeviceState.FAILED, DeviceState.REJECTED)
        payload = shared.encode(
            EventMessage(
                device_id=self.device_id,
                deployment_id=deployment_id,
                state=state,
                ok=ok,
                error_code=code,
                message=message[:1000],
                timings_ms=timings or {},
                details=details or {},
            )
        )
        self.send(shared.events_topic(self.device_id, self.prefix), payload, 1, False)

    def telemetry(self, interval_s: float) -> bytes:
        models = []
        if self.active is not None:
            models.append(
                ModelStats(
                    model=self.active.model,
                    deployment_id=self.active.deployment_id,
                    requests=_HISTOGRAM.total,
                    latency_counts=_COUNTS,
                    p50_ms=_HISTOGRAM.percentile(50),
                    p95_ms=_HISTOGRAM.percentile(95),
                    p99_ms=_HISTOGRAM.percentile(99),
                )
            )
        return shared.encode(
            TelemetryMessage(
                device_id=self.device_id,
                interval_s=interval_s,
                models=models,
                system=SystemStats(
                    cpu_percent=round(self.rng.uniform(5, 60), 1),
                    memory_used_bytes=self.rng.randint(150, 200) << 20,
                    temperature_c=round(self.rng.uniform(45, 70), 1),
                    disk_free_bytes=8 << 30,
                ),
            )
        )

    # -- what the device is told -----------------------------------------------------

    def on_command(self, payload: bytes) -> None:
        """Handle one command as the agent would: a refusal is an event, never an error."""
        digest = hashlib.sha256(payload).hexdigest()
        try:
            command = shared.decode(payload)
        except MessageError as exc:
            self._note(digest, "", 0, "garbage")
            self.event("", DeviceState.REJECTED, code=exc.code, message=str(exc),
                       details={"command_sha256": digest})  # fmt: skip
            return
        if isinstance(command, PingCommand):
            self._note(digest, "", 0, "ping")
            self.publish_status()
            return
        if not isinstance(command, DeployCommand | RollbackCommand):
            self._note(digest, "", 0, command.kind)
            self.event("", DeviceState.REJECTED, code=MessageError.code,
                       message=f"a simulated device takes no {command.kind!r} commands",
                       details={"command_sha256": digest})  # fmt: skip
            return
        doc = self._verified(command.signed, digest)
        if doc is None:
            return
        self._note(digest, doc.deployment_id, doc.sequence, doc.kind)
        if doc.deployment_id in self.finished or (
            self.current is not None and self.current[0] == doc.deployment_id
        ):
            self._known(doc, command.signed)
            return
        try:
            shared.check_document(
                doc, command.signed, device_id=self.device_id, last_sequence=self.last_sequence
            )
            if isinstance(doc, RollbackOrder) and (
                self.active is None or self.active.deployment_id != doc.undoes
            ):
                raise RollbackMismatch(f"this device does not serve {doc.undoes}")
        except MessageError as exc:
            self.event(doc.deployment_id, DeviceState.REJECTED, code=exc.code, message=str(exc),
                       details={"command_sha256": digest})  # fmt: skip
            return
        self.last_sequence = doc.sequence
        if isinstance(doc, Manifest):
            self._deploy(doc)
        else:
            self._roll_back(doc)

    def _note(self, digest: str, deployment_id: str, sequence: int, kind: str) -> None:
        self.received.append(Receipt(deployment_id, sequence, digest[:16], kind, time.time()))

    def _verified(self, blob: SignedBlob, digest: str) -> Manifest | RollbackOrder | None:
        try:
            doc = shared.parse_signed_document(shared.verify(blob, self.keyring))  # type: ignore[arg-type]
            if not isinstance(doc, Manifest | RollbackOrder):
                raise MessageError(f"a simulated device takes no {doc.kind} documents")
        except MessageError as exc:
            self._note(digest, "", 0, "refused")
            self.event("", DeviceState.REJECTED, code=exc.code, message=str(exc),
                       details={"command_sha256": digest})  # fmt: skip
            return None
        return doc

    def _known(self, doc: Manifest | RollbackOrder, blob: SignedBlob) -> None:
        """As the agent: a re-signed order with a new sequence is answered with how it
        ended (or the status while it runs); a redelivery of the same bytes is ignored."""
        try:
            shared.check_document(
                doc, blob, device_id=self.device_id, last_sequence=self.last_sequence
            )
        except MessageError:
            return
        self.last_sequence = doc.sequence
        ended = self.finished.get(doc.deployment_id)
        if ended is not None:
            self.event(doc.deployment_id, ended, details={"repeated": 1})
        self.publish_status()

    # -- a deployment, state by state ------------------------------------------------

    def _deploy(self, doc: Manifest) -> None:
        self.current = (doc.deployment_id, DeviceState.DOWNLOADING)
        self.event(doc.deployment_id, DeviceState.DOWNLOADING)
        self._step(doc, 0, {})

    def _step(self, doc: Manifest, index: int, timings: dict[str, float]) -> None:
        state = DEPLOY_STEPS[index]
        self.current = (doc.deployment_id, state)
        self.publish_status()  # the agent saves, then reports, before every action
        took = self.timings.of(state, self.rng)

        def done() -> None:
            if state in _TIMING_KEYS:
                timings[_TIMING_KEYS[state]] = round(took * 1000, 3)
            if index + 1 < len(DEPLOY_STEPS):
                self.event(doc.deployment_id, DEPLOY_STEPS[index + 1], timings=dict(timings))
                self._step(doc, index + 1, timings)
                return
            serving = ServingModel(
                model=doc.model, deployment_id=doc.deployment_id, sha256=doc.artifact.sha256
            )
            if self.active is None or self.active.deployment_id != doc.deployment_id:
                self.previous = self.active
            self.active = serving
            self._finish(doc.deployment_id, DeviceState.COMMITTED, timings)

        self.later(took, done)

    def _roll_back(self, doc: RollbackOrder) -> None:
        self.current = (doc.deployment_id, DeviceState.ROLLING_BACK)
        self.event(doc.deployment_id, DeviceState.ROLLING_BACK)
        self.publish_status()

        def done() -> None:
            if self.previous is None:
                self._finish(doc.deployment_id, DeviceState.FAILED, {}, NothingToRollBack.code)
                return
            self.active, self.previous = self.previous, self.active
            self._finish(doc.deployment_id, DeviceState.ROLLED_BACK, {})

        self.later(self.timings.of(DeviceState.ROLLING_BACK, self.rng), done)

    def _finish(
        self,
        deployment_id: str,
        state: DeviceState,
        timings: dict[str, float],
        code: str | None = None,
    ) -> None:
        self.current = (deployment_id, state)
        self.finished[deployment_id] = state
        if state is DeviceState.COMMITTED:
            self.committed_at[deployment_id] = time.time()
        self.event(deployment_id, state, code=code, timings=dict(timings))
        self.publish_status()  # saved as terminal
        self.publish_status()  # and once more when the lifecycle returns, as the agent does

    def summary(self) -> dict[str, object]:
        """What a benchmark reads back: every command received, and what is served."""
        return {
            "received": [list(r) for r in self.received],
            "serving": self.active.deployment_id if self.active else None,
            "last_sequence": self.last_sequence,
            "committed_at": self.committed_at,
        }
