"""The registry's rollout tables (schema 7: rollouts, their waves, gate evaluations) and the
daemon's heartbeat (schema 8)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlmodel import Field, SQLModel, UniqueConstraint

from ._tables import json_field, utcnow, when_field


class RolloutState(StrEnum):
    """Where a rollout is; the transitions between them are in ``rollout._engine``."""

    RUNNING = "running"  # a wave is installing or baking
    PAUSED = "paused"  # by an operator, an inconclusive gate, or a failed one with --on-fail hold
    ROLLING_BACK = "rolling_back"  # aborted: touched devices are being sent back
    COMPLETED = "completed"  # every wave passed
    ABORTED = "aborted"  # every touched device was sent back (or said why it could not)


ACTIVE_ROLLOUT_STATES = frozenset(
    {RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.ROLLING_BACK}
)


class WaveState(StrEnum):
    WAITING = "waiting"  # not started
    INSTALLING = "installing"  # its devices have their orders; not all have finished
    BAKING = "baking"  # finished installing; gathering evidence for the gates
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    CANCELLED = "cancelled"  # never started: the rollout was aborted


class Rollout(SQLModel, table=True):
    """One model version on its way to a target set, wave by wave (schema 7). Its rows in
    ``deployment`` carry ``rollout_id`` and share the manifest's deployment id, which is
    also ``rollout_id`` here. ``revision`` rises with every write: writers compare and set."""

    __tablename__ = "rollout"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(unique=True, max_length=128)
    model_version_id: int = Field(foreign_key="model_version.id")
    selector: dict[str, Any] = (
        json_field()
    )  # {"devices": [...]} | {"profile": ...} | {"labels": ...}
    plan: dict[str, Any] = json_field()  # a RolloutPlan as JSON
    state: str = Field(default=RolloutState.RUNNING.value, max_length=16)
    current_wave: int = 0
    revision: int = 0
    reason: str = ""  # why the state is what it is
    started_by: str = Field(default="", max_length=64)
    note: str = ""  # the operator's --reason when starting
    created_at: datetime = when_field(default_factory=utcnow)
    updated_at: datetime = when_field(default_factory=utcnow)


class RolloutWave(SQLModel, table=True):
    """One wave of a rollout: its frozen device list once started, and its deadlines' anchors."""

    __tablename__ = "rollout_wave"
    __table_args__ = (UniqueConstraint("rollout_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id", ondelete="CASCADE")
    number: int  # from 0
    planned: int  # devices planned for it
    state: str = Field(default=WaveState.WAITING.value, max_length=16)
    devices: list[int] = json_field()  # device ids, frozen at start (counted by the gates)
    queued: list[int] = json_field()  # device ids offline at start: sent, not counted
    started_at: datetime | None = when_field(default=None)
    bake_started_at: datetime | None = when_field(default=None)
    analysed_at: datetime | None = when_field(default=None)
    decided_at: datetime | None = when_field(default=None)
    decision: str | None = Field(default=None, max_length=16)


class GateEvaluation(SQLModel, table=True):
    """One evaluation of one gate for one wave, append-only, with what it was computed from."""

    __tablename__ = "gate_evaluation"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id", ondelete="CASCADE", index=True)
    wave: int
    gate: str = Field(max_length=32)
    decision: str = Field(max_length=16)
    statistic: float | None = None
    threshold: float | None = None
    inputs: dict[str, Any] = json_field()
    detail: str = ""
    at: datetime = when_field(default_factory=utcnow)


class DaemonHeartbeat(SQLModel, table=True):
    """The latest sign of life of one ``edgefleet serve`` (schema 8), one row per client id,
    rewritten every ``every_s`` seconds; ``fleet.daemon_state`` reads it for the CLI."""

    __tablename__ = "daemon_heartbeat"

    name: str = Field(primary_key=True, max_length=128)  # the daemon's MQTT client id
    host: str = Field(max_length=255)
    pid: int
    version: str = Field(max_length=64)
    every_s: float  # how often it beats: a beat older than a few of these is stale
    started_at: datetime = when_field(default_factory=utcnow)
    beat_at: datetime = when_field(default_factory=utcnow)
    stopped_at: datetime | None = when_field(default=None)  # set by a clean shutdown
    broker_connected: bool = False
    detail: str = ""  # why it is unhealthy ("" when healthy), as /healthz says it
