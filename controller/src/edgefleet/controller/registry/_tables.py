"""The registry's tables (SQLModel) and the deployment states stored in them.

Table models end in nothing (``Device``); the input (``Create``) and output (``Public``)
shapes are in ``_shapes``. The schema itself is created and changed only by
``_migrations``; a test checks that both agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel, UniqueConstraint


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def when_field(**kw: Any) -> Any:
    return Field(sa_type=sa.DateTime(timezone=True), **kw)


def json_field(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


class DeploymentState(StrEnum):
    """Where one device is in one deployment, as the controller sees it."""

    WAITING = "waiting"  # in a rollout wave that has not started yet
    PENDING = "pending"  # recorded, not yet sent
    SENT = "sent"  # manifest published to the device's command topic
    IN_PROGRESS = "in_progress"  # the agent reported a step
    COMMITTED = "committed"  # serving the new model
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"  # a newer deployment replaced it before it finished
    CANCELLED = "cancelled"  # its rollout was aborted before it was sent


# The states a device's part of a deployment never leaves.
FINISHED_STATES = frozenset(
    {
        DeploymentState.COMMITTED,
        DeploymentState.FAILED,
        DeploymentState.ROLLED_BACK,
        DeploymentState.SUPERSEDED,
        DeploymentState.CANCELLED,
    }
)


class DeploymentKind(StrEnum):
    """What a deployment row orders: a model to serve, or a return to the previous one."""

    DEPLOY = "deploy"
    ROLLBACK = "rollback"  # ``undoes`` names the deployment whose model it takes back


class KeyState(StrEnum):
    """A signing key's place in a rotation (DESIGN §4a)."""

    CURRENT = "current"  # signs every new manifest and order
    NEXT = "next"  # introduced to devices by a trust update; current after `key rotate --finish`
    RETIRED = "retired"  # revoked on devices; its private file is deleted


class TrustUpdateState(StrEnum):
    """Where one device is in one trust update, as the controller sees it."""

    PENDING = "pending"  # signed and stored, not yet published
    SENT = "sent"  # published to the device's command topic
    CONFIRMED = "confirmed"  # the device applied it (event trust_updated)
    FAILED = "failed"  # the device refused it


# -- tables ----------------------------------------------------------------------


class Profile(SQLModel, table=True):
    """A copy of a profile file as it was when a device or variant referenced it."""

    __tablename__ = "profile"

    name: str = Field(primary_key=True, max_length=64)
    description: str = ""
    arch: str = Field(max_length=32)
    cores: int
    ram_mb: int
    spec: dict[str, Any] = json_field()
    source: str = ""
    updated_at: datetime = when_field(default_factory=utcnow)


class Device(SQLModel, table=True):
    __tablename__ = "device"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=64)
    profile: str = Field(foreign_key="profile.name", max_length=64)
    labels: dict[str, str] = json_field()
    token_sha256: str = Field(max_length=64)  # the artifact bearer token, hashed
    mqtt_password_hash: str = Field(max_length=200)  # Mosquitto password_file format
    created_at: datetime = when_field(default_factory=utcnow)
    # since schema 2: what the device last told us
    last_sequence: int = 0
    online: bool = False
    last_seen: datetime | None = when_field(default=None)
    agent_version: str = ""
    # since schema 7: what the device's retained status last said it serves
    serving_deployment_id: str | None = Field(default=None, max_length=128)
    serving_model: str | None = Field(default=None, max_length=256)  # name:version/variant
    previous_deployment_id: str | None = Field(default=None, max_length=128)
    status_at: datetime | None = when_field(
        default=None
    )  # that status's sent_at (the device's clock)
    # since schema 9: that status's deployment (the last accepted), its state there, the
    # device's last sequence and when it arrived (our clock), for reconciliation
    status_deployment_id: str | None = Field(default=None, max_length=128)
    status_state: str | None = Field(default=None, max_length=32)
    status_sequence: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    status_received_at: datetime | None = when_field(default=None)
    # since schema 9: the newest p95 its telemetry reported, and that interval's end
    p95_ms: float | None = None
    p95_at: datetime | None = when_field(default=None)


class Model(SQLModel, table=True):
    __tablename__ = "model"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=128)
    created_at: datetime = when_field(default_factory=utcnow)


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", ondelete="CASCADE")
    version: str = Field(max_length=64)
    io: dict[str, Any] = json_field()  # IOSignature
    smoke_test: dict[str, Any] = json_field()  # SmokeTest with the reference output
    source_name: str = ""  # the file name it was added from
    created_at: datetime = when_field(default_factory=utcnow)


class Artifact(SQLModel, table=True):
    __tablename__ = "artifact"

    sha256: str = Field(primary_key=True, max_length=64)
    size: int = Field(sa_type=sa.BigInteger)
    path: str  # relative to the artifact store, e.g. sha256/ab/abcd...
    format: str = Field(default="onnx", max_length=16)
    created_at: datetime = when_field(default_factory=utcnow)


class Variant(SQLModel, table=True):
    """One deployable file of a model version: the original, or a compressed one."""

    __tablename__ = "variant"
    __table_args__ = (UniqueConstraint("model_version_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", ondelete="CASCADE")
    name: str = Field(max_length=64)
    artifact_sha256: str = Field(foreign_key="artifact.sha256")
    profile: str | None = Field(default=None, foreign_key="profile.name")
    metrics: dict[str, Any] = json_field()
    # since schema 4: a compressed file's own smoke test; None: the version's (the original)
    smoke_test: dict[str, Any] | None = json_field(nullable=True)
    created_at: datetime = when_field(default_factory=utcnow)


class Deployment(SQLModel, table=True):
    """One device's part of one deployment, with its state (schema 2)."""

    __tablename__ = "deployment"
    __table_args__ = (UniqueConstraint("deployment_id", "device_id"),)

    id: int | None = Field(default=None, primary_key=True)
    deployment_id: str = Field(index=True, max_length=128)
    device_id: int = Field(foreign_key="device.id", ondelete="CASCADE", index=True)
    variant_id: int = Field(foreign_key="variant.id")
    sequence: int | None = None
    state: str = Field(default=DeploymentState.PENDING.value, max_length=32, index=True)
    error_code: str | None = None
    error_message: str | None = None
    created_at: datetime = when_field(default_factory=utcnow)
    updated_at: datetime = when_field(default_factory=utcnow)
    # since schema 3: the exact DeployCommand bytes published, stored with state ``sent``
    payload: bytes | None = Field(default=None, sa_type=sa.LargeBinary)
    # since schema 7: the rollout and wave the row belongs to (None: a hand-made rollback),
    # a rollback row's target, and when the command went out and the device committed
    rollout_id: int | None = Field(default=None, index=True)
    wave: int | None = None
    kind: str = Field(
        default=DeploymentKind.DEPLOY.value,
        max_length=16,
        sa_column_kwargs={"server_default": DeploymentKind.DEPLOY.value},
    )
    undoes: str | None = Field(default=None, max_length=128)
    sent_at: datetime | None = when_field(default=None)
    committed_at: datetime | None = when_field(default=None)
    # the sha256 of the command bytes sent: a device that refuses a command it cannot
    # attribute (signed by a key it does not trust) names it by this digest
    command_sha256: str | None = Field(default=None, max_length=64)
    # since schema 9: when reconciliation last pinged the device about this row; resends
    # after the device showed it never received it
    pinged_at: datetime | None = when_field(default=None)
    resends: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class ArtifactGrant(SQLModel, table=True):
    """A device may read one artifact until ``expires_at`` (schema 5): the candidates of a
    benchmark order sent to it. Its deployments' artifacts need no grant."""

    __tablename__ = "artifact_grant"
    __table_args__ = (sa.Index("ix_artifact_grant_device_sha", "device_id", "artifact_sha256"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", ondelete="CASCADE")
    artifact_sha256: str = Field(max_length=64)
    expires_at: datetime = when_field()
    created_at: datetime = when_field(default_factory=utcnow)


class Event(SQLModel, table=True):
    __tablename__ = "event"
    __table_args__ = (sa.Index("ix_event_device_at", "device_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", ondelete="CASCADE", index=True)
    deployment_id: str | None = Field(default=None, max_length=128)
    state: str = Field(max_length=32)
    ok: bool = True
    error_code: str | None = None
    message: str = ""
    details: dict[str, Any] | None = json_field(nullable=True)
    at: datetime = when_field(default_factory=utcnow)  # when the agent sent it
    received_at: datetime = when_field(default_factory=utcnow)


class Telemetry(SQLModel, table=True):
    """One interval of one model's serving stats on one device, plus system stats."""

    __tablename__ = "telemetry"

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", ondelete="CASCADE")
    at: datetime = when_field(default_factory=utcnow)
    interval_s: float = 0.0
    model: str | None = None  # name:version/variant
    deployment_id: str | None = None
    requests: int = 0
    errors: int = 0
    latency_counts: list[int] | None = json_field(nullable=True)
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    cpu_percent: float | None = None
    memory_used_bytes: int | None = Field(default=None, sa_type=sa.BigInteger)
    temperature_c: float | None = None
    disk_free_bytes: int | None = Field(default=None, sa_type=sa.BigInteger)


class SigningKey(SQLModel, table=True):
    """A controller signing key (schema 6); the private key is a file named by ``key_id``."""

    __tablename__ = "signing_key"

    key_id: str = Field(primary_key=True, max_length=16)
    public_key: str = Field(max_length=64)  # base64 of the raw 32 bytes
    state: str = Field(max_length=16)
    created_at: datetime = when_field(default_factory=utcnow)
    retired_at: datetime | None = when_field(default=None)


class DeviceTrustUpdate(SQLModel, table=True):
    """One trust update for one device (schema 6): its version, its signed command, its state."""

    __tablename__ = "trust_update"
    __table_args__ = (UniqueConstraint("device_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    update_id: str = Field(unique=True, max_length=128)
    device_id: int = Field(foreign_key="device.id", ondelete="CASCADE")
    version: int
    rotation: str = Field(max_length=16)  # the key id the rotation introduces
    signer_key_id: str = Field(max_length=16)
    state: str = Field(default=TrustUpdateState.PENDING.value, max_length=16)
    # the exact TrustCommand bytes, signed when recorded; dropped once the broker has them
    payload: bytes | None = Field(default=None, sa_type=sa.LargeBinary)
    error_code: str | None = None
    error_message: str | None = None
    created_at: datetime = when_field(default_factory=utcnow)
    updated_at: datetime = when_field(default_factory=utcnow)
