"""Sending pending deployments: one signed manifest per device, on its command topic.

The sequence number, the ``sent`` state and the exact command bytes are committed
before the command is published (state before side effect). The bytes are dropped
once the broker has acknowledged them (from then on its persistent session holds the
command for the device), so a row that still has them is one whose publish was never
confirmed (the daemon killed, the broker down): ``resend_unconfirmed`` sends it again,
byte for byte, on the daemon's next connect. Publishing goes through a callable that
returns only once the broker has the message, so the logic runs without a broker in
tests.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from edgefleet import shared
from edgefleet.shared import (
    DeployCommand,
    Manifest,
    RollbackCommand,
    RollbackOrder,
    RuntimeSettings,
)
from edgefleet.shared.errors import EdgefleetError, MessageError, RegistryError

from ..home import Home
from ..registry import (
    Artifact,
    Deployment,
    DeploymentKind,
    DeploymentState,
    Device,
    Model,
    ModelVersion,
    Profile,
    Rollout,
    RolloutState,
    Variant,
)
from ._orders import build_manifest, build_rollback, deploy_payload, rollback_payload
from ._plan import RolloutPlan

log = logging.getLogger("edgefleet.controller.dispatch")

Publish = Callable[[str, bytes], None]  # (topic, payload), QoS 1


@dataclass(frozen=True)
class Dispatched:
    deployment_id: str
    device: str
    sequence: int
    topic: str


def dispatch_pending(
    home: Home, publish: Publish, *, limit: int = 100, now: datetime | None = None
) -> list[Dispatched]:
    """Sign and publish up to ``limit`` pending orders (deployments and rollbacks), oldest
    first, to devices that have connected at least once; not those of a paused rollout, and
    a rollout's deployments only inside its maintenance window (rollbacks go at once).
    ``now`` is the controller's clock: the window's, the orders' issue time and ``sent_at``
    (from which the rollout tick times out a silent device)."""
    key = home.signing_key()
    settings = home.settings
    now = now or datetime.now(UTC)
    sent: list[Dispatched] = []
    with home.session() as session:
        # Rollouts whose window is closed are left out before the limit is applied, so their
        # rows cannot fill every batch and hold back the orders behind them.
        closed = [
            rollout_id
            for rollout_id, plan in session.exec(
                select(Rollout.id, Rollout.plan).where(
                    col(Rollout.id).in_(
                        select(Deployment.rollout_id).where(
                            Deployment.state == DeploymentState.PENDING.value
                        )
                    )
                )
            ).all()
            if not _window_open(plan, now)
        ]
        # A device never heard from has no session at the broker yet, so a command sent
        # now would be dropped; once it has connected, the broker queues for it offline.
        ids = session.exec(
            select(Deployment.id)
            .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
            .outerjoin(Rollout, col(Rollout.id) == Deployment.rollout_id)
            .where(
                Deployment.state == DeploymentState.PENDING.value,
                col(Device.last_seen).is_not(None),
                (col(Deployment.kind) == DeploymentKind.ROLLBACK.value)
                | (
                    (col(Rollout.state).is_(None) | (Rollout.state != RolloutState.PAUSED.value))
                    & (col(Rollout.id).is_(None) | col(Rollout.id).not_in(closed))
                ),
            )
            .order_by(col(Deployment.id))
            .limit(limit)
        ).all()
    for row_id in ids:
        try:
            with home.session(write=True) as session:
                prepared = _prepare(home, session, row_id, key, now)  # type: ignore[arg-type]
        except EdgefleetError as exc:
            log.error("deployment row %s cannot be sent: %s", row_id, exc)
            _fail(home, row_id, exc)  # type: ignore[arg-type]
            continue
        if prepared is None:
            continue
        document, device_name, payload = prepared
        topic = shared.command_topic(device_name, settings.topic_prefix)
        publish(topic, payload)
        _confirmed(home, row_id)  # type: ignore[arg-type]
        what = document.model if isinstance(document, Manifest) else f"undoing {document.undoes}"
        log.info(
            "sent %s to %s (sequence %d, %s)",
            document.deployment_id, device_name, document.sequence, what,
        )  # fmt: skip
        sent.append(Dispatched(document.deployment_id, device_name, document.sequence, topic))
    return sent


def _window_open(plan: Mapping[str, object] | None, now: datetime) -> bool:
    """Whether a rollout's maintenance window (if it has one) is open now."""
    if not plan or not plan.get("window"):
        return True
    window = RolloutPlan.model_validate(plan).window
    return window is None or window.is_open(now)


def resend_unconfirmed(
    home: Home, publish: Publish, *, now: datetime | None = None
) -> list[Dispatched]:
    """Publish again the stored command of every row still ``sent`` whose publish the broker
    never acknowledged, oldest first.

    Such a row may never have reached the broker, and nothing else would ever send it.
    The same bytes are safe to send twice: the agent ignores a deployment id it knows.
    A row whose manifest has expired is left alone (logged): the agent would refuse it,
    and the controller cannot tell one never delivered from one the device is working
    on and has not reported yet. Rows sent before schema 3 have nothing stored to resend.
    """
    now = now or datetime.now(UTC)
    prefix = home.settings.topic_prefix
    with home.session() as session:
        rows = session.exec(
            select(Deployment, Device.name)
            .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
            .where(
                Deployment.state == DeploymentState.SENT.value,
                col(Deployment.payload).is_not(None),
            )
            .order_by(col(Deployment.id))
        ).all()
    resent: list[Dispatched] = []
    for row, device_name in rows:
        row_id, deployment_id, sequence, payload = (
            row.id,
            row.deployment_id,
            row.sequence,
            row.payload,
        )
        assert payload is not None and sequence is not None  # both set with state sent
        try:
            expires_at = _expiry(payload)
        except MessageError as exc:
            log.error(
                "stored command of %s for %s is unusable: %s", deployment_id, device_name, exc
            )
            continue
        if expires_at <= now:
            log.warning(
                "%s for %s expired at %s unconfirmed; not resent (deploy again to retry)",
                deployment_id, device_name, expires_at.isoformat(),
            )  # fmt: skip
            continue
        topic = shared.command_topic(device_name, prefix)
        publish(topic, payload)
        _confirmed(home, row_id)  # type: ignore[arg-type]
        log.info(
            "resent %s to %s (sequence %d): the device has not confirmed it yet",
            deployment_id, device_name, sequence,
        )  # fmt: skip
        resent.append(Dispatched(deployment_id, device_name, sequence, topic))
    return resent


def _confirmed(home: Home, row_id: int) -> None:
    """The broker has the command: nothing to resend, and no reason to keep the bytes."""
    with home.session(write=True) as session:
        row = session.get(Deployment, row_id)
        if row is not None:
            row.payload = None
            session.add(row)


def _expiry(payload: bytes) -> datetime:
    """When the manifest inside a stored (self-signed, so trusted) command expires."""
    command = shared.decode(payload)
    if not isinstance(command, DeployCommand | RollbackCommand):
        raise MessageError(f"expected a deploy or rollback command, found {command.kind!r}")
    document = shared.parse_signed_document(command.signed.payload_bytes())
    if not isinstance(document, Manifest | RollbackOrder):
        raise MessageError(f"expected a manifest, found {type(document).__name__}")
    return document.expires_at


def _prepare(
    home: Home, session: Session, row_id: int, key: Ed25519PrivateKey, now: datetime
) -> tuple[Manifest | RollbackOrder, str, bytes] | None:
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
    document: Manifest | RollbackOrder
    if row.kind == DeploymentKind.ROLLBACK.value:
        document = build_rollback(
            deployment_id=row.deployment_id,
            device=device,
            sequence=sequence,
            undoes=row.undoes or "",
            key=key,
            ttl_s=home.settings.manifest_ttl_s,
            now=now,
        )
        payload = rollback_payload(document, key)
    else:
        document = build_manifest(
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
            now=now,
        )
        payload = deploy_payload(document, key)
    device.last_sequence = sequence
    row.sequence = sequence
    row.state = DeploymentState.SENT.value
    row.payload = payload  # committed with the state, so a lost publish can be resent
    row.command_sha256 = hashlib.sha256(payload).hexdigest()
    row.updated_at = row.sent_at = now
    session.add(device)
    session.add(row)
    return document, device.name, payload


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
