"""Fixtures for the protocol tests: signing keys and a valid document of each kind."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.shared import (
    ArtifactRef,
    BenchmarkOrder,
    IOSignature,
    Manifest,
    ModelRef,
    RollbackOrder,
    RuntimeSettings,
    SmokeTest,
    TensorData,
    TensorSpec,
    generate_private_key,
    key_id,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
DEVICE = "rpi-4.kitchen_1"
SHA = "ab" * 32


@pytest.fixture
def private_key() -> Ed25519PrivateKey:
    return generate_private_key()


@pytest.fixture
def other_key() -> Ed25519PrivateKey:
    return generate_private_key()


def _signed_fields(key: Ed25519PrivateKey, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "device_id": DEVICE,
        "key_id": key_id(key.public_key()),
        "issued_at": NOW - timedelta(minutes=1),
        "expires_at": NOW + timedelta(hours=1),
    }
    fields.update(overrides)
    return fields


def _io() -> IOSignature:
    return IOSignature(
        inputs=[TensorSpec(name="input", dtype="float32", shape=[None, 1, 8, 8])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 10])],
    )


@pytest.fixture
def make_manifest(private_key: Ed25519PrivateKey) -> Callable[..., Manifest]:
    def make(**overrides: Any) -> Manifest:
        rng = np.random.default_rng(0)
        fields = _signed_fields(private_key)
        fields.update(
            deployment_id="dep-0001",
            sequence=7,
            model=ModelRef(name="digits", version="1.2.0", variant="int8"),
            artifact=ArtifactRef(sha256=SHA, size=1234, url="models/digits/1.2.0.onnx"),
            io=_io(),
            smoke_test=SmokeTest(
                inputs={"input": TensorData.from_numpy(rng.random((2, 1, 8, 8), np.float32))},
                outputs={"logits": TensorData.from_numpy(rng.random((2, 10), np.float32))},
                rtol=1e-2,
            ),
            runtime=RuntimeSettings(intra_op_threads=2),
        )
        fields.update(overrides)
        return Manifest(**fields)

    return make


@pytest.fixture
def make_rollback(private_key: Ed25519PrivateKey) -> Callable[..., RollbackOrder]:
    def make(**overrides: Any) -> RollbackOrder:
        fields = _signed_fields(
            private_key, deployment_id="rb-1", sequence=8, undoes="dep-0001", reason="p99 up"
        )
        fields.update(overrides)
        return RollbackOrder(**fields)

    return make


@pytest.fixture
def make_benchmark(private_key: Ed25519PrivateKey) -> Callable[..., BenchmarkOrder]:
    def make(**overrides: Any) -> BenchmarkOrder:
        fields = _signed_fields(private_key)
        fields.update(
            benchmark_id="bench-1",
            model=ModelRef(name="digits", version="1.3.0"),
            artifact=ArtifactRef(sha256=SHA, size=99, url="digits-1.3.0.onnx"),
            io=_io(),
            sample={"input": TensorData.from_numpy(np.zeros((1, 1, 8, 8), np.float32))},
            runs=5,
        )
        fields.update(overrides)
        return BenchmarkOrder(**fields)

    return make
