"""Sending pending deployments: one signed manifest per device, on its command topic.

The sequence number and the ``sent`` state are committed before the manifest is
published (state before side effect); publishing goes through a callable, so the
logic runs without a broker in tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from edgefleet import shared
from edgefleet.shared import (
    ArtifactRef,
    DeployCommand,
    IOSignature,
    Manifest,
    ModelRef,
    RuntimeSettings,
    SmokeTest,
)
from edgefleet.shared.errors import EdgefleetError, RegistryError

from ._home import Home
from ._models import (
    Artifact,
    Deployment,
    DeploymentState,
    Device,
    Model,
    ModelVersion,
    Profile,
    Variant,
)
from ._store import ArtifactStore

log = logging.getLogger("edgefleet.controller.dispatch")

Publish = Callable[[str, bytes], None]  # (topic, payload), QoS 1


@dataclass(frozen=True)
class Dispatched:
    deployment_id: str
    device: str
    sequence: int
    topic: str


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
        smoke_test=SmokeTest.model_validate(version.smoke_test),
        runtime=runtime,
    )


def deploy_payload(manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    blob = shared.sign(shared.encode_document(manifest), key)
    return shared.encode(DeployCommand(signed=blob))


def dispatch_pending(home: Home, publish: Publish, *, limit: int = 100) -> list[Dispatched]:
    """Sign and publish up to ``limit`` pending deployments, oldest first, to devices that
    have connected at least once."""
    key = home.signing_key()
    settings = home.settings
    sent: list[Dispatched] = []
    with home.session() as session:
        # A device never heard from has no session at the broker yet, so a command sent
        # now would be dropped; once it has connected, the broker queues for it offline.
        ids = session.exec(
            select(Deployment.id)
            .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
            .where(
                Deployment.state == DeploymentState.PENDING.value,
                col(Device.last_seen).is_not(None),
            )
            .order_by(col(Deployment.id))
            .limit(limit)
        ).all()
    for row_id in ids:
        try:
            with home.session(write=True) as session:
                prepared = _prepare(home, session, row_id, key)  # type: ignore[arg-type]
        except EdgefleetError as exc:
            log.error("deployment row %s cannot be sent: %s", row_id, exc)
            _fail(home, row_id, exc)  # type: ignore[arg-type]
            continue
        if prepared is None:
            continue
        manifest, device_name = prepared
        topic = shared.command_topic(device_name, settings.topic_prefix)
        publish(topic, deploy_payload(manifest, key))
        log.info(
            "sent %s to %s (sequence %d, %s)",
            manifest.deployment_id, device_name, manifest.sequence, manifest.model,
        )  # fmt: skip
        sent.append(Dispatched(manifest.deployment_id, device_name, manifest.sequence, topic))
    return sent


def _prepare(
    home: Home, session: Session, row_id: int, key: Ed25519PrivateKey
) -> tuple[Manifest, str] | None:
    found = session.exec(
        select(Deployment, Device, Variant)
        .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
        .join(Variant, Variant.id == Deployment.variant_id)  # type: ignore[arg-type]
        .where(Deployment.id == row_id)
    ).first()
    if found is None:
        return None
    row, device, variant = found
    artifact = session.get(Artifact, variant.artifact_sha256)
    version = session.get(ModelVersion, variant.model_version_id)
    model = session.get(Model, version.model_id) if version else None
    if artifact is None or version is None or model is None:
        raise RegistryError(f"variant {variant.id} points at a missing artifact or version")
    if row.state != DeploymentState.PENDING.value:
        return None  # superseded or sent meanwhile
    sequence = device.last_sequence + 1
    manifest = build_manifest(
        deployment_id=row.deployment_id,
        device=device,
        sequence=sequence,
        model=model,
        version=version,
        variant=variant,
        artifact=artifact,
        runtime=_runtime(home, session, device.profile),
        key=key,
        ttl_s=home.settings.manifest_ttl_s,
    )
    device.last_sequence = sequence
    row.sequence = sequence
    row.state = DeploymentState.SENT.value
    row.updated_at = datetime.now(UTC)
    session.add(device)
    session.add(row)
    return manifest, device.name


def _runtime(home: Home, session: Session, profile: str) -> RuntimeSettings:
    """The profile file's runtime settings; the registry's copy if the file is gone."""
    try:
        return home.profile(profile).runtime
    except EdgefleetError:
        row = session.get(Profile, profile)
        spec = (row.spec or {}).get("runtime") if row else None
        return RuntimeSettings.model_validate(spec) if spec else RuntimeSettings()


def _fail(home: Home, row_id: int, exc: EdgefleetError) -> None:
    with home.session(write=True) as session:
        row = session.get(Deployment, row_id)
        if row is not None:
            row.state = DeploymentState.FAILED.value
            row.error_code = exc.code
            row.error_message = exc.message
            row.updated_at = datetime.now(UTC)
            session.add(row)
