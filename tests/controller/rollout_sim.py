"""A fleet simulated in-process for the rollout engine's tests: boards that obey the signed
orders dispatch publishes and report status, events and telemetry through the real ingest,
on a clock the test moves. No broker, no agent: what is checked is what the registry holds.

Each :meth:`Sim.step` is one round of the daemon's life on the simulated clock: the boards
report the interval that just ended, the rollout tick runs, pending orders go out, and the
boards act on what they received (commit, fail, roll back, or stay silent)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import col, select

from edgefleet import shared
from edgefleet.controller import Home
from edgefleet.controller.catalog import add_model
from edgefleet.controller.daemon import ingest_many
from edgefleet.controller.fleet import add_device
from edgefleet.controller.registry import (
    Deployment,
    Device,
    DeviceCreate,
    GateEvaluation,
    Rollout,
    RolloutState,
    RolloutWave,
)
from edgefleet.controller.rollout import (
    Bake,
    Gates,
    RolloutPlan,
    Transition,
    advance_rollouts,
    deploy,
    dispatch_pending,
    rollout_detail,
    start_rollout,
)
from edgefleet.shared import (
    DeviceState,
    EventMessage,
    LatencyHistogram,
    Manifest,
    ModelStats,
    RollbackOrder,
    ServingModel,
    StatusMessage,
    TelemetryMessage,
)

Inbound = StatusMessage | EventMessage | TelemetryMessage
STEP = timedelta(seconds=10)
PI4 = ["pi4-1", "pi4-2", "pi4-3"]
PI5 = ["pi5-1", "pi5-2", "pi5-3"]
ALL = PI4 + PI5
# Waves of 1, 2 and 3 of the six boards; a bake of two reports (the error gate needs about
# 380 requests without errors to put the upper end of its interval under 1 %).
PLAN = RolloutPlan(
    waves=("1", "50%", "100%"),
    bake=Bake(min_requests=50, min_s=10, max_s=60),
    gates=Gates(),
    in_progress_timeout_s=60,
    analysis_interval_s=5,
)


def histogram(requests: int, latency_ms: float) -> list[int]:
    """``requests`` latencies spread evenly over 0.7-1.3 times ``latency_ms`` (deterministic:
    the same interval twice gives the same counts)."""
    h = LatencyHistogram()
    for i in range(requests):
        h.record(latency_ms * (0.7 + 0.6 * i / max(requests - 1, 1)))
    return h.counts


@dataclass
class Board:
    """One simulated device: what it serves, and how it answers the next manifest."""

    name: str
    profile: str
    online: bool = True
    serving: ServingModel | None = None
    previous: ServingModel | None = None
    last_sequence: int = 0
    # what it does with a manifest: "commit", "fail" (the install fails), or "silent"
    # (it acts on no order and reports nothing about them)
    on_deploy: str = "commit"
    # orders received and not acted on yet (a silent board keeps them)
    inbox: list[Manifest | RollbackOrder] = field(default_factory=list)
    # the last order it accepted and where it got with it, as its status says
    current: str | None = None
    current_state: DeviceState = DeviceState.IDLE
    pings: int = 0  # pings received and not answered yet


@dataclass(frozen=True)
class Sent:
    device: str
    topic: str
    document: Manifest | RollbackOrder


class Sim:
    def __init__(self, home: Home, boards: list[Board], *, start: datetime | None = None):
        self.home = home
        self.boards = {b.name: b for b in boards}
        self.now = start or datetime.now(UTC).replace(microsecond=0)
        self.sent: list[Sent] = []
        self.pings: list[str] = []  # the devices pinged, in order
        self.transitions: list[Transition] = []
        # milliseconds per request and error share, by model version (ModelRef.version)
        self.latency_ms: dict[str, float] = {}
        self.error_rate: dict[str, float] = {}
        self.requests_per_step = 200
        self.v1 = ""  # the deployment every board served before the test began
        self._keyring = shared.trusted_keyring([home.signing_key().public_key()])

    # -- the wire ------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes) -> None:
        """The broker: every command must be signed by the controller's key."""
        command = shared.decode(payload)
        if isinstance(command, shared.PingCommand):
            name, _ = shared.parse_topic(topic)
            self.pings.append(name)
            self.boards[name].pings += 1
            return
        assert isinstance(command, shared.DeployCommand | shared.RollbackCommand)
        document = shared.parse_signed_document(shared.verify(command.signed, self._keyring))
        assert isinstance(document, Manifest | RollbackOrder)
        assert topic == shared.command_topic(document.device_id)
        self.sent.append(Sent(document.device_id, topic, document))
        self.boards[document.device_id].inbox.append(document)

    def ingest(self, *batch: tuple[str, Inbound]) -> None:
        """What the daemon's writer does with a batch of received messages."""
        with self.home.session(write=True) as session:
            ingest_many(session, list(batch), now=self.now)

    def dispatch(
        self, *, now: datetime | None = None, limit: int = 100
    ) -> list[Manifest | RollbackOrder]:
        """What the daemon's dispatch sends now: the documents, as the boards got them."""
        before = len(self.sent)
        dispatch_pending(self.home, self.publish, now=now or self.now, limit=limit)
        return [s.document for s in self.sent[before:]]

    def tick(self) -> list[Transition]:
        moved = advance_rollouts(self.home, now=self.now)
        self.transitions += moved
        return moved

    # -- what boards say -----------------------------------------------------------

    def status(self, name: str, *, at: datetime | None = None) -> None:
        self.ingest((name, self._status(name, at)))

    def _status(self, name: str, at: datetime | None = None) -> StatusMessage:
        b = self.boards[name]
        return StatusMessage(
            device_id=name,
            online=b.online,
            profile=b.profile,
            active=b.serving,
            previous=b.previous,
            last_sequence=b.last_sequence,
            deployment_id=b.current,
            state=b.current_state,
            sent_at=at or self.now,
        )

    def hello(self, *names: str) -> None:
        for name in names or tuple(self.boards):
            self.boards[name].online = True
            self.status(name)

    def go_offline(self, name: str) -> None:
        """The broker publishes the board's last will."""
        self.boards[name].online = False
        self.status(name)

    def event(self, name: str, deployment_id: str, state: DeviceState, **kw: object) -> None:
        self.ingest((name, self._event(name, deployment_id, state, **kw)))

    def _event(
        self, name: str, deployment_id: str, state: DeviceState, **kw: object
    ) -> EventMessage:
        return EventMessage(
            device_id=name,
            deployment_id=deployment_id,
            state=state,
            sent_at=self.now,
            **kw,  # type: ignore[arg-type]
        )

    def report(self, names: list[str] | None = None) -> None:
        """Each online board's telemetry for the interval that ends now, for what it serves."""
        batch = []
        for b in self.boards.values():
            if (names is not None and b.name not in names) or not b.online or not b.serving:
                continue
            version = b.serving.model.version
            n = self.requests_per_step
            errors = round(n * self.error_rate.get(version, 0.0))
            stats = ModelStats(
                model=b.serving.model,
                deployment_id=b.serving.deployment_id,
                requests=n,
                errors=errors,
                latency_counts=histogram(n, self.latency_ms.get(version, 2.0)),
            )
            batch.append(
                (
                    b.name,
                    TelemetryMessage(
                        device_id=b.name,
                        interval_s=STEP.total_seconds(),
                        models=[stats],
                        sent_at=self.now,
                    ),
                )
            )
        if batch:
            self.ingest(*batch)

    # -- what boards do ------------------------------------------------------------

    def obey(self, names: list[str] | None = None, *, drop_events: bool = False) -> None:
        """Every online board acts on the orders it received, in sequence order; a silent
        one keeps them all (stuck, or its reports never arrive). With ``drop_events`` only
        their statuses arrive (a broker that crashed with their events)."""
        batch: list[tuple[str, Inbound]] = []
        for b in self.boards.values():
            if (names is not None and b.name not in names) or not b.online:
                continue
            if b.on_deploy == "silent":
                continue
            inbox, b.inbox = sorted(b.inbox, key=lambda d: d.sequence), []
            for doc in inbox:
                batch += [(b.name, m) for m in self._answer(b.name, doc)]
            if b.pings:  # answered after the orders that came before them
                b.pings = 0
                batch.append((b.name, self._status(b.name)))
        if drop_events:
            batch = [(n, m) for n, m in batch if not isinstance(m, EventMessage)]
        if batch:
            self.ingest(*batch)

    def act(self, name: str, doc: Manifest | RollbackOrder) -> None:
        """What a board does with one order, reported now."""
        self.ingest(*[(name, m) for m in self._answer(name, doc)])

    def _answer(self, name: str, doc: Manifest | RollbackOrder) -> list[Inbound]:
        b = self.boards[name]
        if doc.sequence <= b.last_sequence:  # a copy of an order it already took
            return [self._status(name)]
        b.last_sequence = doc.sequence
        if isinstance(doc, Manifest):
            if doc.deployment_id == b.current:  # sent again: applied once, answered again
                return [self._status(name)]
            b.current = doc.deployment_id
            out: list[Inbound] = [self._event(name, doc.deployment_id, DeviceState.DOWNLOADING)]
            if b.on_deploy == "fail":
                b.current_state = DeviceState.FAILED
                failed = self._event(
                    name,
                    doc.deployment_id,
                    DeviceState.FAILED,
                    ok=False,
                    error_code="smoke_test_failed",
                    message="output differs from the reference",
                )
                return [*out, failed, self._status(name)]
            b.previous = b.serving
            b.serving = ServingModel(
                model=doc.model, deployment_id=doc.deployment_id, sha256=doc.artifact.sha256
            )
            b.current_state = DeviceState.COMMITTED
            out.append(self._event(name, doc.deployment_id, DeviceState.COMMITTED))
        else:
            if b.serving is None or b.serving.deployment_id != doc.undoes or b.previous is None:
                refused = self._event(
                    name,
                    doc.deployment_id,
                    DeviceState.REJECTED,
                    ok=False,
                    error_code="rollback_mismatch",
                )
                return [refused]
            b.serving, b.previous = b.previous, None
            b.current, b.current_state = doc.deployment_id, DeviceState.ROLLED_BACK
            out = [self._event(name, doc.deployment_id, DeviceState.ROLLED_BACK)]
        return [*out, self._status(name)]

    # -- time ----------------------------------------------------------------------

    def step(self, by: timedelta = STEP, *, send: bool = True) -> list[Transition]:
        """The clock moves on; boards report; the tick runs; with ``send``, what the tick
        made pending goes out and the boards act on it."""
        self.now += by
        self.report()
        moved = self.tick()
        if send:
            self.dispatch()
            self.obey()
        return moved

    def run_until(
        self, done: Callable[[], bool], *, max_steps: int = 40, by: timedelta = STEP
    ) -> int:
        """Steps until ``done()`` holds after a tick (what that tick made pending is not sent
        yet); how many it took. Fails if it never happens."""
        for n in range(1, max_steps + 1):
            self.step(by, send=False)
            if done():
                return n
            self.dispatch()
            self.obey()
        raise AssertionError(f"not done after {max_steps} steps; transitions {self.transitions}")

    # -- reading the registry ------------------------------------------------------

    def rollout(self, rollout_id: str) -> Rollout:
        with self.home.session() as session:
            return session.exec(select(Rollout).where(Rollout.rollout_id == rollout_id)).one()

    def state(self, rollout_id: str) -> str:
        return self.rollout(rollout_id).state

    def rows(self, rollout_id: str, *, kind: str = "deploy") -> dict[str, Deployment]:
        """The rollout's rows of one kind, by device name."""
        with self.home.session() as session:
            rollout = session.exec(select(Rollout).where(Rollout.rollout_id == rollout_id)).one()
            found = session.exec(
                select(Deployment, Device.name)
                .join(Device, col(Device.id) == Deployment.device_id)
                .where(Deployment.rollout_id == rollout.id, Deployment.kind == kind)
            ).all()
            return {name: row for row, name in found}

    def row_states(self, rollout_id: str, *, kind: str = "deploy") -> dict[str, str]:
        return {name: row.state for name, row in self.rows(rollout_id, kind=kind).items()}

    def waves(self, rollout_id: str) -> list[RolloutWave]:
        with self.home.session() as session:
            rollout = session.exec(select(Rollout).where(Rollout.rollout_id == rollout_id)).one()
            return list(
                session.exec(
                    select(RolloutWave)
                    .where(RolloutWave.rollout_id == rollout.id)
                    .order_by(col(RolloutWave.number))
                ).all()
            )

    def evaluations(self, rollout_id: str) -> list[GateEvaluation]:
        with self.home.session() as session:
            rollout = session.exec(select(Rollout).where(Rollout.rollout_id == rollout_id)).one()
            return list(
                session.exec(
                    select(GateEvaluation)
                    .where(GateEvaluation.rollout_id == rollout.id)
                    .order_by(col(GateEvaluation.id))
                ).all()
            )

    def sent_to(self, name: str, kind: type | None = None) -> list[Manifest | RollbackOrder]:
        return [
            s.document
            for s in self.sent
            if s.device == name and (kind is None or isinstance(s.document, kind))
        ]


# -- the fleet the tests start from ---------------------------------------------------


def six_boards(home: Home, model_file: Path, model_file_v2: Path) -> Sim:
    """Six boards over two profiles, all serving digits 1.0.0 (by a plain deploy) for half
    a minute, each reporting 200 requests every 10 s at about 2 ms; digits 2.0.0 added too."""
    boards = [Board(n, "rpi4") for n in PI4] + [Board(n, "rpi5") for n in PI5]
    for b in boards:
        add_device(home, DeviceCreate(name=b.name, profile=b.profile))
    add_model(home, model_file, name="digits", version="1.0.0")
    add_model(home, model_file_v2, name="digits", version="2.0.0")
    sim = Sim(home, boards)
    sim.latency_ms = {"1.0.0": 2.0, "2.0.0": 2.0}
    sim.hello()
    (first, *_) = deploy(home, "digits:1.0.0", devices=ALL, started_by="setup", now=sim.now)
    sim.v1 = first.deployment_id
    sim.dispatch()
    sim.obey()
    sim.run_until(lambda: sim.state(sim.v1) == RolloutState.COMPLETED, max_steps=1)
    for _ in range(3):  # a baseline for the gates: 30 s of the old model's telemetry
        sim.step()
    sim.sent.clear()
    sim.transitions.clear()
    return sim


def start(sim: Sim, plan: RolloutPlan = PLAN, devices: list[str] = ALL) -> str:
    """digits 2.0.0 to ``devices``, started now by alice; its id."""
    detail = start_rollout(
        sim.home,
        "digits:2.0.0",
        devices=devices,
        plan=plan,
        started_by="alice",
        note="ticket 7",
        now=sim.now,
    )
    return detail.rollout.rollout_id


def waves(sim: Sim, rollout_id: str) -> list[tuple[str, list[str], list[str], str | None]]:
    """Each wave as ``rollout_detail`` shows it: (state, counted, queued, decision)."""
    detail = rollout_detail(sim.home, rollout_id)
    return [(w.state, w.devices, w.queued, w.decision) for w in detail.waves]


def settled(sim: Sim, rollout_id: str) -> bool:
    """The rollout waits for nobody but an operator."""
    return sim.state(rollout_id) in ("completed", "aborted", "paused")
