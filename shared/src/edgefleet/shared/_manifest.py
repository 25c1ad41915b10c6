"""The signed documents: a deployment manifest, a rollback order, a benchmark order, and a
trust update (the keys a device trusts, TUF-style: signed by a key it trusts now).

Each is JSON bytes signed by the controller (see ``_signing``). The receiver
verifies the bytes, then parses them with :func:`parse_signed_document`, then
checks them against itself with :func:`check_document`.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from ._signing import SignedBlob, raw_public_key
from ._signing import key_id as id_of_key
from .errors import (
    ConfigError,
    ManifestExpired,
    MessageError,
    ReplayedSequence,
    SignatureError,
    WrongDevice,
)

if TYPE_CHECKING:  # numpy is optional for shared; agent and controller both have it
    import numpy as np

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_TRUSTED_KEYS = 8
MAX_REVOKED_KEYS = 256


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelRef(_Frozen):
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    variant: str = Field(default="fp32", min_length=1, max_length=64)

    def __str__(self) -> str:
        return f"{self.name}:{self.version}/{self.variant}"


class ArtifactRef(_Frozen):
    sha256: str
    size: int = Field(gt=0)
    url: str  # relative to the device's artifact base URL
    format: Literal["onnx"] = "onnx"

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256.fullmatch(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v

    @field_validator("url")
    @classmethod
    def _relative(cls, v: str) -> str:
        if "://" in v or v.startswith("/") or ".." in v.split("/") or not v:
            raise ValueError("artifact url must be a relative path without '..'")
        return v


class TensorSpec(_Frozen):
    name: str
    dtype: str  # numpy name: float32, int64, ...
    shape: list[int | str | None]  # None or a name for a free dimension


class IOSignature(_Frozen):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class TensorData(_Frozen):
    """A small tensor inline: dtype, shape and base64 of its C-order bytes."""

    dtype: str
    shape: list[int]
    data: str

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> TensorData:
        import numpy as np

        array = np.asarray(array, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
        return cls(
            dtype=str(array.dtype),
            shape=list(array.shape),
            data=base64.b64encode(array.tobytes()).decode("ascii"),
        )

    def to_numpy(self) -> np.ndarray:
        import numpy as np

        raw = base64.b64decode(self.data)
        return np.frombuffer(raw, dtype=np.dtype(self.dtype)).reshape(self.shape).copy()


class SmokeTest(_Frozen):
    inputs: dict[str, TensorData]
    outputs: dict[str, TensorData]
    rtol: float = 1e-3
    atol: float = 1e-4


class RuntimeSettings(_Frozen):
    execution_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = Field(default=0, ge=0)  # 0 lets ONNX Runtime choose
    inter_op_threads: int = Field(default=1, ge=0)
    benchmark_runs: int = Field(default=20, ge=0, le=10_000)


class _Signed(_Frozen):
    device_id: str
    key_id: str
    issued_at: datetime
    expires_at: datetime

    @field_validator("issued_at", "expires_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=UTC)


class Manifest(_Signed):
    """Everything a device needs to fetch, verify, test and serve one model."""

    kind: Literal["deploy"] = "deploy"
    deployment_id: str = Field(pattern=_ID.pattern)
    sequence: int = Field(ge=1)
    model: ModelRef
    artifact: ArtifactRef
    io: IOSignature
    smoke_test: SmokeTest
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)


class RollbackOrder(_Signed):
    """Switch back to the previous model. The only way to go back in sequence.

    ``undoes`` names the deployment whose model the device must be serving for the order
    to apply; a device serving anything else (or nothing) refuses it, so a late rollback
    cannot undo a model that has been replaced since the order was signed."""

    kind: Literal["rollback"] = "rollback"
    deployment_id: str = Field(pattern=_ID.pattern)
    sequence: int = Field(ge=1)
    undoes: str = Field(pattern=_ID.pattern)
    reason: str = ""


class BenchmarkOrder(_Signed):
    """Measure a candidate model on the device without serving it."""

    kind: Literal["benchmark"] = "benchmark"
    benchmark_id: str = Field(pattern=_ID.pattern)
    model: ModelRef
    artifact: ArtifactRef
    io: IOSignature
    sample: dict[str, TensorData]
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    runs: int = Field(default=50, ge=1, le=10_000)


class TrustUpdate(_Signed):
    """The whole set of keys a device trusts from now on, and the key ids it must never trust
    again. Signed by a key the device trusts now; ``version`` rises by one per device and
    update, so an old update cannot be replayed to bring back a retired key."""

    kind: Literal["trust"] = "trust"
    update_id: str = Field(pattern=_ID.pattern)
    version: int = Field(ge=1)
    keys: list[str] = Field(min_length=1, max_length=MAX_TRUSTED_KEYS)  # base64 of 32 raw bytes
    revoked: list[str] = Field(default_factory=list, max_length=MAX_REVOKED_KEYS)  # key ids

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for text in v:
            try:
                raw_public_key(text)
            except ConfigError as exc:
                raise ValueError(exc.message) from exc
        return v

    @field_validator("revoked")
    @classmethod
    def _key_ids(cls, v: list[str]) -> list[str]:
        if not all(_KEY_ID.fullmatch(k) for k in v):
            raise ValueError("a revoked key id must be 16 lowercase hex digits")
        return v

    def key_ids(self) -> list[str]:
        return [id_of_key(raw_public_key(k)) for k in self.keys]

    def keyring(self) -> dict[str, Any]:
        """The keys of this update by key id (Ed25519 public keys)."""
        return {id_of_key(k): k for k in (raw_public_key(text) for text in self.keys)}


AnyDocument = Manifest | RollbackOrder | BenchmarkOrder | TrustUpdate
SignedDocument = Annotated[AnyDocument, Field(discriminator="kind")]
_DOCUMENT = TypeAdapter(SignedDocument)


def encode_document(doc: AnyDocument) -> bytes:
    return doc.model_dump_json().encode()


def parse_signed_document(payload: bytes) -> AnyDocument:
    """Parse verified bytes into a typed document."""
    try:
        return _DOCUMENT.validate_json(payload)
    except ValidationError as exc:
        raise MessageError(f"signed document is malformed: {first_error(exc)}") from exc


def check_document(
    doc: AnyDocument,
    blob: SignedBlob,
    *,
    device_id: str,
    last_sequence: int,
    now: datetime | None = None,
) -> None:
    """Raise unless ``doc`` is meant for this device, now, and newer than what we applied."""
    now = now or datetime.now(UTC)
    if doc.key_id != blob.key_id:
        raise SignatureError("the document names a different key than the one that signed it")
    if doc.device_id != device_id:
        raise WrongDevice(f"manifest is for device {doc.device_id!r}, this is {device_id!r}")
    if doc.expires_at <= now:
        raise ManifestExpired(f"expired at {doc.expires_at.isoformat()}")
    sequence = getattr(doc, "sequence", None)
    if sequence is not None and sequence <= last_sequence:
        raise ReplayedSequence(
            f"sequence {sequence} is not above the last accepted {last_sequence}"
        )


def check_trust_update(
    update: TrustUpdate,
    blob: SignedBlob,
    *,
    device_id: str,
    version: int,
    now: datetime | None = None,
) -> None:
    """Raise unless ``update`` is for this device, now, above ``version``, and consistent:
    no key it trusts is among those it revokes. (Its signature is checked before parsing.)"""
    check_document(update, blob, device_id=device_id, last_sequence=0, now=now)
    if update.version <= version:
        raise ReplayedSequence(f"trust version {update.version} is not above the applied {version}")
    if set(update.key_ids()) & set(update.revoked):
        raise MessageError("a trust update may not trust a key it revokes")


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"{where}: {err['msg']}"
