"""Typed, versioned MQTT payloads, encoded and decoded in one place.

Every payload is a JSON object with ``schema`` (the protocol version) and
``kind``. :func:`decode` is the only place raw bytes become messages.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ._histogram import N_BUCKETS
from ._manifest import ModelRef, first_error
from ._signing import SignedBlob
from ._states import DeviceState
from .errors import MessageError

SCHEMA_VERSION: Literal[1] = 1
# Manifests carry a smoke-test sample inline; anything past this is garbage.
MAX_MESSAGE_BYTES = 1 << 20


def _now() -> datetime:
    return datetime.now(UTC)


class _Message(BaseModel):
    # Unknown fields are ignored so a newer peer of the same schema can add some.
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    sent_at: datetime = Field(default_factory=_now)


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


class PingCommand(_Message):
    """Ask the agent to publish its status again."""

    kind: Literal["ping"] = "ping"
    nonce: str = ""


Command = DeployCommand | RollbackCommand | BenchmarkCommand | PingCommand

# -- agent -> controller ---------------------------------------------------------


class ServingModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    model: ModelRef
    deployment_id: str
    sha256: str


class StatusMessage(_Message):
    """Retained; the broker publishes the last will (online=False) when the agent vanishes."""

    kind: Literal["status"] = "status"
    device_id: str
    online: bool
    agent_version: str = ""
    profile: str = ""
    state: DeviceState = DeviceState.IDLE
    deployment_id: str | None = None
    active: ServingModel | None = None
    previous: ServingModel | None = None
    last_sequence: int = 0


class EventMessage(_Message):
    """One step of a deployment, a rollback, a benchmark or a rejected command."""

    kind: Literal["event"] = "event"
    device_id: str
    deployment_id: str
    state: DeviceState
    ok: bool = True
    error_code: str | None = None
    message: str = ""
    timings_ms: dict[str, float] = Field(default_factory=dict)
    details: dict[str, float | int | str | None] = Field(default_factory=dict)


class ModelStats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    model: ModelRef
    deployment_id: str
    requests: int = 0
    errors: int = 0
    latency_counts: list[int] = Field(min_length=N_BUCKETS, max_length=N_BUCKETS)
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


class SystemStats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    cpu_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    rss_bytes: int | None = None
    temperature_c: float | None = None
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None


class TelemetryMessage(_Message):
    kind: Literal["telemetry"] = "telemetry"
    device_id: str
    interval_s: float
    models: list[ModelStats] = Field(default_factory=list)
    system: SystemStats = Field(default_factory=SystemStats)


Message = Annotated[
    DeployCommand
    | RollbackCommand
    | BenchmarkCommand
    | PingCommand
    | StatusMessage
    | EventMessage
    | TelemetryMessage,
    Field(discriminator="kind"),
]
_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def encode(message: _Message) -> bytes:
    return message.model_dump_json(by_alias=True).encode()


def decode(payload: bytes) -> Message:
    """Turn raw bytes from the broker into a typed message, or raise MessageError."""
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
        return _MESSAGE.validate_python(raw)
    except ValidationError as exc:
        raise MessageError(f"invalid {raw.get('kind', 'message')!s}: {first_error(exc)}") from exc
