"""The signed orders the controller gives a device: the deployment manifest and the rollback
order, each signed as the exact bytes that are published."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet import shared
from edgefleet.shared import (
    ArtifactRef,
    DeployCommand,
    IOSignature,
    Manifest,
    ModelRef,
    RollbackCommand,
    RollbackOrder,
    RuntimeSettings,
    SmokeTest,
)

from ..registry import Artifact, ArtifactStore, Device, Model, ModelVersion, Variant


def build_manifest(
    *,
    deployment_id: str,
    device: Device,
    sequence: int,
    model: Model,
    version: ModelVersion,
    variant: Variant,
    artifact: Artifact,
    runtime: RuntimeSettings,
    key: Ed25519PrivateKey,
    ttl_s: int,
    now: datetime | None = None,
) -> Manifest:
    now = now or datetime.now(UTC)
    return Manifest(
        deployment_id=deployment_id,
        device_id=device.name,
        sequence=sequence,
        issued_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
        key_id=shared.key_id(key.public_key()),
        model=ModelRef(name=model.name, version=version.version, variant=variant.name),
        artifact=ArtifactRef(
            sha256=artifact.sha256,
            size=artifact.size,
            url=ArtifactStore.relative_path(artifact.sha256),
        ),
        io=IOSignature.model_validate(version.io),
        smoke_test=SmokeTest.model_validate(variant.smoke_test or version.smoke_test),
        runtime=runtime,
    )


def deploy_payload(manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    blob = shared.sign(shared.encode_document(manifest), key)
    return shared.encode(DeployCommand(signed=blob))


def build_rollback(
    *,
    deployment_id: str,
    device: Device,
    sequence: int,
    undoes: str,
    key: Ed25519PrivateKey,
    ttl_s: int,
    reason: str = "",
    now: datetime | None = None,
) -> RollbackOrder:
    """Back to the device's previous model, only if it still serves ``undoes``."""
    now = now or datetime.now(UTC)
    return RollbackOrder(
        deployment_id=deployment_id,
        device_id=device.name,
        sequence=sequence,
        undoes=undoes,
        reason=reason,
        issued_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
        key_id=shared.key_id(key.public_key()),
    )


def rollback_payload(order: RollbackOrder, key: Ed25519PrivateKey) -> bytes:
    blob = shared.sign(shared.encode_document(order), key)
    return shared.encode(RollbackCommand(signed=blob))
