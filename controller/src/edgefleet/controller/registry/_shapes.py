"""The shapes the service layer takes and hands out: inputs end in ``Create``, outputs in
``Public`` (or name what they report, like ``DeviceStatus``); never table rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import field_validator
from sqlmodel import SQLModel

from edgefleet.shared import IOSignature, SmokeTest, check_device_id

from ._tables import Device, as_utc


class DeviceCreate(SQLModel):
    name: str
    profile: str
    labels: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _device_id(cls, v: str) -> str:
        return check_device_id(v)


class DevicePublic(SQLModel):
    name: str
    profile: str
    labels: dict[str, str]
    created_at: datetime
    online: bool
    last_seen: datetime | None
    agent_version: str
    last_sequence: int

    @classmethod
    def of(cls, device: Device) -> DevicePublic:
        return cls(
            name=device.name,
            profile=device.profile,
            labels=dict(device.labels or {}),
            created_at=as_utc(device.created_at),  # type: ignore[arg-type]
            online=device.online,
            last_seen=as_utc(device.last_seen),
            agent_version=device.agent_version,
            last_sequence=device.last_sequence,
        )


class VariantPublic(SQLModel):
    name: str
    sha256: str
    size: int
    profile: str | None
    metrics: dict[str, Any]


class ModelVersionPublic(SQLModel):
    name: str
    version: str
    created_at: datetime
    source_name: str
    io: IOSignature
    smoke_test: SmokeTest
    variants: list[VariantPublic]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class DeploymentPublic(SQLModel):
    deployment_id: str
    device: str
    profile: str
    model: str  # name:version/variant
    state: str
    error_code: str | None = None
    error_message: str | None = None
    wave: int | None = None  # its rollout wave (from 0)
    kind: str = "deploy"  # or "rollback"


class WavePublic(SQLModel):
    number: int  # from 0
    planned: int
    state: str
    devices: list[str]  # frozen when the wave started; counted by its gates
    queued: list[str]  # offline when it started: sent, not counted
    started_at: datetime | None
    bake_started_at: datetime | None
    decided_at: datetime | None
    decision: str | None


class RolloutPublic(SQLModel):
    rollout_id: str  # also the deployment id its devices see
    model: str  # name:version
    selector: dict[str, Any]
    state: str
    current_wave: int
    waves: int
    reason: str
    started_by: str
    note: str
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int]  # its devices' deployment rows by state
    rollback_counts: dict[str, int] = {}  # its rollback orders (after an abort) by state


class RolloutDetail(SQLModel):
    rollout: RolloutPublic
    plan: dict[str, Any]
    waves: list[WavePublic]
    devices: list[DeploymentPublic]  # the rollout's rows, rollback rows included


class GateEvaluationPublic(SQLModel):
    wave: int
    gate: str
    decision: str
    statistic: float | None
    threshold: float | None
    detail: str
    inputs: dict[str, Any]
    at: datetime


# How far the registry's word on a device can be trusted: "online" needs the device's last
# status to say so, a daemon alive to have heard any will since, and a recent message.
OnlineState = Literal["online", "offline", "stale"]


class DeviceStatus(SQLModel):
    device: str
    online: bool  # online_state == "online": fresh evidence says it is connected
    profile: str
    model: str | None  # name:version of the last committed deployment
    state: str | None  # of the row ``desired`` comes from, else of its newest row
    p95_ms: float | None  # the newest the device reported in the last hour
    last_seen: datetime | None
    # since rollouts: the evidence behind ``online``, and desired vs serving
    online_state: OnlineState = "offline"
    reported_online: bool = False  # what the device's last status (or its will) said
    age_s: float | None = None  # seconds since the controller last heard from it
    labels: dict[str, str] = {}
    desired: str | None = None  # name:version/variant its newest live deployment row orders
    deployment_id: str | None = None  # that row's deployment (or rollback) id
    serving: str | None = None  # name:version/variant, as the device's status says
    serving_deployment_id: str | None = None
    agent_version: str = ""
    # since reconciliation: a fault edgefleet cannot repair alone, in a sentence; None: none
    attention: str | None = None


class EventPublic(SQLModel):
    id: int
    at: datetime
    device: str
    deployment_id: str | None
    state: str
    ok: bool
    error_code: str | None
    message: str
    details: dict[str, Any] | None
    # who started the rollout the event belongs to, and why (None: not a rollout's event)
    started_by: str | None = None
    note: str | None = None
