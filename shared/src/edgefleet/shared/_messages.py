"""Typed, versioned MQTT payloads, encoded and decoded in one place.

Every payload is a JSON object with ``schema`` (the protocol version) and
``kind``. :func:`decode` is the only place raw bytes become messages.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ._histogram import N_BUCKETS
from ._manifest import ModelRef, first_error
from ._signing import SignedBlob
from ._states import DeviceState
from .errors import MessageError

SCHEMA_VERSION: Literal[1] = 1
# Manifests carry a smoke-test sample inline; anything past this is garbage.
MAX_MESSAGE_BYTES = 1 << 20


# -- bounds on what a device sends (DESIGN §4a) --------------------------------------
# Every field a device sends is bounded here, where it enters: integers exact in JSON and
# inside SQL's BIGINT, no NaN or infinity, strings and lists of known length, timestamps
# near the receiver's clock (when it passes one to ``decode``).
MAX_COUNT = 2**53
MAX_MS = 1e9  # a latency or duration, in milliseconds: about 11.6 days
MAX_ID = 128  # deployment and benchmark ids
MAX_NAME = 64  # device ids, profiles, versions of the agent, error codes, dict keys
MAX_TEXT = 1000  # a human-readable message: longer ones are cut, not refused
MAX_DETAIL = 512  # a string value in an event's details (a model reference fits)
MAX_ENTRIES = 32  # entries in an event's timings or details
MAX_MODELS = 16  # models in one telemetry message
# A device's clock may run a little ahead; events and telemetry older than this are not
# news any more (the controller's broker session keeps messages for a day).
MAX_CLOCK_AHEAD = timedelta(hours=1)
MAX_AGE = timedelta(days=7)

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Millis = Annotated[float, Field(ge=0, le=MAX_MS, allow_inf_nan=False)]
Name = Annotated[str, Field(max_length=MAX_NAME)]
DeploymentId = Annotated[str, Field(max_length=MAX_ID)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Detail = (
    Annotated[float, Field(allow_inf_nan=False)]
    | Annotated[int, Field(ge=-MAX_COUNT, le=MAX_COUNT)]
    | Annotated[str, Field(max_length=MAX_DETAIL)]
    | None
)


def _now() -> datetime:
    return datetime.now(UTC)


class _Message(BaseModel):
    # Unknown fields are ignored so a newer peer of the same schema can add some.
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)
    # how old ``sent_at`` may be, measured against the receiver's clock; None: any age
    max_age: ClassVar[timedelta | None] = None

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    sent_at: datetime = Field(default_factory=_now)

    @field_validator("sent_at")
    @classmethod
    def _near_now(cls, value: datetime, info: ValidationInfo) -> datetime:
        now = (info.context or {}).get("now")
        if now is None:
            return value
        when = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if when > now + MAX_CLOCK_AHEAD:
            raise ValueError(f"sent_at {value.isoformat()} is ahead of the receiver's clock")
        if cls.max_age is not None and when < now - cls.max_age:
            raise ValueError(f"sent_at {value.isoformat()} is older than {cls.max_age}")
        return value


# -- controller -> agent ---------------------------------------------------------


class DeployCommand(_Message):
    kind: Literal["deploy"] = "deploy"
    signed: SignedBlob


class RollbackCommand(_Message):
    kind: Literal["rollback"] = "rollback"
    signed: SignedBlob


class BenchmarkCommand(_Message):
    kind: Literal["benchmark"] = "benchmark"
    signed: SignedBlob


class TrustCommand(_Message):
    """A signed :class:`~edgefleet.shared.TrustUpdate`: the keys the device trusts from now on."""

    kind: Literal["trust"] = "trust"
    signed: SignedBlob


class PingCommand(_Message):
    """Ask the agent to publish its status again."""

    kind: Literal["ping"] = "ping"
    nonce: str = ""


Command = DeployCommand | RollbackCommand | BenchmarkCommand | TrustCommand | PingCommand

# -- agent -> controller ---------------------------------------------------------


class ServingModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    model: ModelRef
    deployment_id: DeploymentId
    sha256: Sha256


class StatusMessage(_Message):
    """Retained; the broker publishes the last will (online=False) when the agent vanishes.

    Any age: a will carries the time the agent connected, which may be long ago."""

    kind: Literal["status"] = "status"
    device_id: Name
    online: bool
    agent_version: Name = ""
    profile: Name = ""
    state: DeviceState = DeviceState.IDLE
    deployment_id: DeploymentId | None = None
    active: ServingModel | None = None
    previous: ServingModel | None = None
    last_sequence: Count = 0
    # why ``deployment_id`` failed, when it did: the event that said so may have been lost
    error_code: Name | None = None
    error: str = ""

    @field_validator("error", mode="before")
    @classmethod
    def _cut(cls, value: object) -> object:
        if isinstance(value, str) and len(value) > MAX_TEXT:
            return value[: MAX_TEXT - 1] + "…"
        return value


class EventMessage(_Message):
    """One step of a deployment, a rollback, a benchmark or a rejected command."""

    max_age: ClassVar[timedelta | None] = MAX_AGE

    kind: Literal["event"] = "event"
    device_id: Name
    deployment_id: DeploymentId
    state: DeviceState
    ok: bool = True
    error_code: Name | None = None
    message: str = ""
    timings_ms: dict[Name, Millis] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    details: dict[Name, Detail] = Field(default_factory=dict, max_length=MAX_ENTRIES)

    @field_validator("message", mode="before")
    @classmethod
    def _cut(cls, value: object) -> object:
        if isinstance(value, str) and len(value) > MAX_TEXT:
            return value[: MAX_TEXT - 1] + "…"
        return value


class ModelStats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    model: ModelRef
    deployment_id: DeploymentId
    requests: Count = 0
    errors: Count = 0
    latency_counts: list[Count] = Field(min_length=N_BUCKETS, max_length=N_BUCKETS)
    p50_ms: Millis | None = None
    p95_ms: Millis | None = None
    p99_ms: Millis | None = None


class SystemStats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    cpu_percent: Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)] | None = None
    memory_used_bytes: Count | None = None
    memory_total_bytes: Count | None = None
    rss_bytes: Count | None = None
    # the one reading that may be below zero: boards live outdoors
    temperature_c: Annotated[float, Field(ge=-273.15, le=1000, allow_inf_nan=False)] | None = None
    disk_free_bytes: Count | None = None
    disk_total_bytes: Count | None = None


class TelemetryMessage(_Message):
    max_age: ClassVar[timedelta | None] = MAX_AGE

    kind: Literal["telemetry"] = "telemetry"
    device_id: Name
    interval_s: Annotated[float, Field(gt=0, le=7 * 86_400, allow_inf_nan=False)]
    models: list[ModelStats] = Field(default_factory=list, max_length=MAX_MODELS)
    system: SystemStats = Field(default_factory=SystemStats)


Message = Annotated[
    DeployCommand
    | RollbackCommand
    | BenchmarkCommand
    | TrustCommand
    | PingCommand
    | StatusMessage
    | EventMessage
    | TelemetryMessage,
    Field(discriminator="kind"),
]
_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def encode(message: _Message) -> bytes:
    return message.model_dump_json(by_alias=True).encode()


def decode(payload: bytes, *, now: datetime | None = None) -> Message:
    """Turn raw bytes from the broker into a typed message, or raise MessageError.

    With ``now`` (the receiver's clock, timezone-aware), ``sent_at`` must be near it: not
    ahead by more than ``MAX_CLOCK_AHEAD``, and for events and telemetry not older than
    ``MAX_AGE``. The controller passes its clock; an agent, whose clock may be wrong
    after a reboot without a real-time clock, does not."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    # ValueError covers bad UTF-8, bad JSON and over-long integers; RecursionError, deep nesting.
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise MessageError("message is not JSON") from exc
    if not isinstance(raw, dict):
        raise MessageError("message is not a JSON object")
    schema = raw.get("schema")
    # type() as well: in Python, true and 1.0 both compare equal to 1
    if type(schema) is not int or schema != SCHEMA_VERSION:
        raise MessageError(f"unsupported schema {raw.get('schema')!r}; expected {SCHEMA_VERSION}")
    try:
        return _MESSAGE.validate_python(raw, context={"now": now} if now else None)
    except ValidationError as exc:
        raise MessageError(f"invalid {raw.get('kind', 'message')!s}: {first_error(exc)}") from exc
