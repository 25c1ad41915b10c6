"""The signed documents: encoding, parsing, and the checks a device makes before acting."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edgefleet.shared import (
    ArtifactRef,
    BenchmarkOrder,
    Manifest,
    ModelRef,
    RollbackOrder,
    RuntimeSettings,
    TensorData,
    check_document,
    encode_document,
    parse_signed_document,
    sign,
    trusted_keyring,
    verify,
)
from edgefleet.shared.errors import (
    ManifestExpired,
    ManifestRejected,
    MessageError,
    ReplayedSequence,
    SignatureError,
    WrongDevice,
)

from .conftest import DEVICE, NOW, SHA

# -- encoding and parsing --------------------------------------------------------------


def test_manifest_round_trip(make_manifest: Callable[..., Manifest]) -> None:
    manifest = make_manifest()
    parsed = parse_signed_document(encode_document(manifest))
    assert isinstance(parsed, Manifest)
    assert parsed == manifest
    assert parsed.kind == "deploy"
    assert str(parsed.model) == "digits:1.2.0/int8"


def test_round_trip_through_signature(
    make_manifest: Callable[..., Manifest], private_key: Ed25519PrivateKey
) -> None:
    manifest = make_manifest()
    blob = sign(encode_document(manifest), private_key)
    payload = verify(blob, trusted_keyring([private_key.public_key()]))
    assert parse_signed_document(payload) == manifest


def test_smoke_test_tensors_survive_the_round_trip(make_manifest: Callable[..., Manifest]) -> None:
    manifest = make_manifest()
    parsed = parse_signed_document(encode_document(manifest))
    assert isinstance(parsed, Manifest)
    for name, tensor in manifest.smoke_test.inputs.items():
        np.testing.assert_array_equal(parsed.smoke_test.inputs[name].to_numpy(), tensor.to_numpy())
    assert parsed.smoke_test.inputs["input"].to_numpy().shape == (2, 1, 8, 8)


def test_encoded_document_is_json_with_kind(make_manifest: Callable[..., Manifest]) -> None:
    raw = json.loads(encode_document(make_manifest()))
    assert raw["kind"] == "deploy"
    assert raw["device_id"] == DEVICE
    assert raw["sequence"] == 7


def test_defaults() -> None:
    assert ModelRef(name="m", version="1").variant == "fp32"
    runtime = RuntimeSettings()
    assert runtime.execution_providers == ["CPUExecutionProvider"]
    assert runtime.intra_op_threads == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"garbage",
        b"\xff\xfe\x00",
        b"[]",
        b"null",
        b'{"kind": "deploy"}',  # missing everything else
        b'{"kind": "launch", "device_id": "d"}',  # unknown kind
        b'{"device_id": "d"}',  # no kind
        b"[" * 10_000,
    ],
)
def test_parse_garbage(payload: bytes) -> None:
    with pytest.raises(MessageError, match="signed document is malformed"):
        parse_signed_document(payload)


def test_parse_rejects_unknown_fields(make_manifest: Callable[..., Manifest]) -> None:
    raw = json.loads(encode_document(make_manifest()))
    raw["surprise"] = 1
    with pytest.raises(MessageError, match="surprise"):
        parse_signed_document(json.dumps(raw).encode())


def test_parse_error_names_the_field(make_manifest: Callable[..., Manifest]) -> None:
    raw = json.loads(encode_document(make_manifest()))
    raw["sequence"] = 0
    with pytest.raises(MessageError, match="sequence"):
        parse_signed_document(json.dumps(raw).encode())


def test_discriminated_union_rollback(make_rollback: Callable[..., RollbackOrder]) -> None:
    order = make_rollback()
    parsed = parse_signed_document(encode_document(order))
    assert type(parsed) is RollbackOrder
    assert parsed == order
    assert parsed.kind == "rollback"


def test_discriminated_union_benchmark(make_benchmark: Callable[..., BenchmarkOrder]) -> None:
    order = make_benchmark()
    parsed = parse_signed_document(encode_document(order))
    assert type(parsed) is BenchmarkOrder
    assert parsed == order
    assert parsed.kind == "benchmark"


def test_kind_decides_the_type(make_rollback: Callable[..., RollbackOrder]) -> None:
    raw = json.loads(encode_document(make_rollback()))
    raw["kind"] = "deploy"  # a rollback body is not a valid manifest
    with pytest.raises(MessageError):
        parse_signed_document(json.dumps(raw).encode())


def test_naive_datetimes_become_utc(make_manifest: Callable[..., Manifest]) -> None:
    manifest = make_manifest(expires_at=datetime(2030, 1, 1, 13, 0))
    assert manifest.expires_at.tzinfo is not None
    assert manifest.expires_at == datetime(2030, 1, 1, 13, 0, tzinfo=UTC)


def test_documents_are_frozen(make_manifest: Callable[..., Manifest]) -> None:
    manifest = make_manifest()
    with pytest.raises(ValidationError):
        manifest.sequence = 99  # type: ignore[misc]


@pytest.mark.parametrize("deployment_id", ["", "-x", "a b", "a/b", "x" * 129, "abc\n"])
def test_deployment_id_pattern(make_manifest: Callable[..., Manifest], deployment_id: str) -> None:
    with pytest.raises(ValidationError):
        make_manifest(deployment_id=deployment_id)


# -- check_document -----------------------------------------------------------------


def _check(doc: Any, key: Ed25519PrivateKey, **kw: Any) -> None:
    kw.setdefault("device_id", DEVICE)
    kw.setdefault("last_sequence", 6)
    kw.setdefault("now", NOW)
    check_document(doc, sign(encode_document(doc), key), **kw)


def test_check_ok(make_manifest: Callable[..., Manifest], private_key: Ed25519PrivateKey) -> None:
    _check(make_manifest(), private_key)
    _check(make_manifest(), private_key, last_sequence=0)


def test_check_ok_for_rollback_and_benchmark(
    make_rollback: Callable[..., RollbackOrder],
    make_benchmark: Callable[..., BenchmarkOrder],
    private_key: Ed25519PrivateKey,
) -> None:
    _check(make_rollback(), private_key, last_sequence=7)
    _check(make_benchmark(), private_key, last_sequence=10**6)  # benchmarks carry no sequence


def test_check_uses_the_clock_by_default(
    make_manifest: Callable[..., Manifest], private_key: Ed25519PrivateKey
) -> None:
    fresh = make_manifest(expires_at=datetime.now(UTC) + timedelta(hours=1))
    check_document(
        fresh, sign(encode_document(fresh), private_key), device_id=DEVICE, last_sequence=0
    )
    stale = make_manifest(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(ManifestExpired):
        check_document(
            stale, sign(encode_document(stale), private_key), device_id=DEVICE, last_sequence=0
        )


def test_wrong_device(
    make_manifest: Callable[..., Manifest], private_key: Ed25519PrivateKey
) -> None:
    with pytest.raises(WrongDevice, match="rpi-2") as info:
        _check(make_manifest(), private_key, device_id="rpi-2")
    assert isinstance(info.value, ManifestRejected)
    assert info.value.code == "wrong_device"


@pytest.mark.parametrize("expired_for", [timedelta(0), timedelta(seconds=1), timedelta(days=30)])
def test_expired(
    make_manifest: Callable[..., Manifest], private_key: Ed25519PrivateKey, expired_for: timedelta
) -> None:
    manifest = make_manifest(issued_at=NOW - timedelta(days=60), expires_at=NOW - expired_for)
    with pytest.raises(ManifestExpired, match="expired"):
        _check(manifest, private_key)


def test_rollback_order_expires_too(
    make_rollback: Callable[..., RollbackOrder], private_key: Ed25519PrivateKey
) -> None:
    with pytest.raises(ManifestExpired):
        _check(make_rollback(expires_at=NOW - timedelta(minutes=1)), private_key)


@pytest.mark.parametrize("last_sequence", [7, 8, 1000])
def test_replayed_sequence(
    make_manifest: Callable[..., Manifest], private_key: Ed25519PrivateKey, last_sequence: int
) -> None:
    with pytest.raises(ReplayedSequence, match=f"sequence 7 .* {last_sequence}"):
        _check(make_manifest(sequence=7), private_key, last_sequence=last_sequence)


def test_rollback_order_is_sequenced(
    make_rollback: Callable[..., RollbackOrder], private_key: Ed25519PrivateKey
) -> None:
    with pytest.raises(ReplayedSequence):
        _check(make_rollback(sequence=8), private_key, last_sequence=8)


def test_document_key_id_must_match_the_signing_key(
    make_manifest: Callable[..., Manifest],
    private_key: Ed25519PrivateKey,
    other_key: Ed25519PrivateKey,
) -> None:
    manifest = make_manifest()  # names private_key's id
    blob = sign(encode_document(manifest), other_key)
    with pytest.raises(SignatureError, match="different key"):
        check_document(manifest, blob, device_id=DEVICE, last_sequence=0, now=NOW)


def test_key_check_comes_first(
    make_manifest: Callable[..., Manifest], other_key: Ed25519PrivateKey
) -> None:
    manifest = make_manifest(device_id="rpi-2")
    blob = sign(encode_document(manifest), other_key)
    with pytest.raises(SignatureError):
        check_document(manifest, blob, device_id=DEVICE, last_sequence=100, now=NOW)


# -- ArtifactRef ----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["model.onnx", "models/digits/1.0.onnx", "a/b..c/d.onnx"])
def test_artifact_url_accepts_relative(url: str) -> None:
    assert ArtifactRef(sha256=SHA, size=1, url=url).url == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "https://evil.example/model.onnx",
        "file:///etc/passwd",
        "/abs/model.onnx",
        "//host/model.onnx",
        "../model.onnx",
        "models/../../model.onnx",
        "models/..",
        "..",
    ],
)
def test_artifact_url_rejects(url: str) -> None:
    with pytest.raises(ValidationError, match="relative path"):
        ArtifactRef(sha256=SHA, size=1, url=url)


@pytest.mark.parametrize(
    "sha256",
    ["", "ab" * 31, "ab" * 33, "AB" * 32, "g" * 64, "ab" * 32 + "\n", " " + "ab" * 31 + "a"],
)
def test_artifact_sha256_rejects(sha256: str) -> None:
    with pytest.raises(ValidationError, match="64 lowercase hex"):
        ArtifactRef(sha256=sha256, size=1, url="m.onnx")


@pytest.mark.parametrize("size", [0, -1])
def test_artifact_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValidationError):
        ArtifactRef(sha256=SHA, size=size, url="m.onnx")


def test_artifact_format_is_onnx_only() -> None:
    assert ArtifactRef(sha256=SHA, size=1, url="m.onnx").format == "onnx"
    with pytest.raises(ValidationError):
        ArtifactRef(sha256=SHA, size=1, url="m.pt", format="torchscript")  # type: ignore[arg-type]


# -- TensorData ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8])
@pytest.mark.parametrize("shape", [(), (1,), (3, 4), (2, 1, 3, 5), (0, 3)])
def test_tensor_numpy_round_trip(dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(42)
    array = (rng.random(shape) * 200).astype(dtype)
    tensor = TensorData.from_numpy(array)
    assert tensor.dtype == np.dtype(dtype).name
    assert tensor.shape == list(shape)
    back = TensorData.model_validate_json(tensor.model_dump_json()).to_numpy()
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_tensor_from_non_contiguous_array() -> None:
    array = np.arange(12, dtype=np.int64).reshape(3, 4).T
    np.testing.assert_array_equal(TensorData.from_numpy(array).to_numpy(), array)
