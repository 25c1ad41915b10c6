"""Sending pending deployments: one signed manifest per device, on its command topic.

The sequence number, the ``sent`` state and the exact command bytes are committed
before the command is published (state before side effect), a batch at a time. The bytes
are dropped once the broker has acknowledged them (from then on its persistent session
holds the command for the device), so a row that still has them is one whose publish was
never confirmed (the daemon killed, the broker down): ``resend_unconfirmed`` sends it
again, byte for byte, on the daemon's next connect. Publishing goes through a callable that
reports what the broker acknowledged, so the logic runs without a broker in tests.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
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
from edgefleet.shared.errors import BrokerError, EdgefleetError, MessageError, RegistryError

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
# [(topic, payload), ...] published at QoS 1, many in flight -> acknowledged or not, in order
PublishMany = Callable[[Sequence[tuple[str, bytes]]], list[bool]]
# Orders prepared, published and confirmed together.
BATCH = 500


@dataclass(frozen=True)
class Dispatched:
    deployment_id: str
    device: str
    sequence: int
    topic: str


def one_by_one(publish: Publish) -> PublishMany:
    """A ``PublishMany`` over a one-message ``publish`` that raises when the broker does not
    acknowledge: in order, stopping at the first failure (the broker is likely down)."""

    def many(messages: Sequence[tuple[str, bytes]]) -> list[bool]:
        acked: list[bool] = []
        for topic, payload in messages:
            try:
                publish(topic, payload)
            except BrokerError as exc:
                log.warning("publish to %s failed: %s", topic, exc)
                break
            acked.append(True)
        return acked + [False] * (len(messages) - len(acked))

    return many


def dispatch_pending(
    home: Home,
    publish: Publish,
    *,
    publish_many: PublishMany | None = None,
    limit: int = BATCH,
    now: datetime | None = None,
) -> list[Dispatched]:
    """Sign and publish up to ``limit`` pending orders (deployments and rollbacks), oldest
    first, to devices that have connected at least once; not those of a paused rollout, and
    a rollout's deployments only inside its maintenance window (rollbacks go at once).
    ``now`` is the controller's clock: the window's, the orders' issue time and ``sent_at``
    (from which the rollout tick times out a silent device).

    A pipeline of three steps: one transaction prepares the whole batch (sequence numbers,
    signed commands and their bytes, state ``sent``); the commands are published back to
    back, many in flight (``publish_many``; without it, ``publish`` one by one); one
    transaction drops the bytes of those the broker acknowledged. A command it did not
    acknowledge keeps its bytes for ``resend_unconfirmed``, and ``BrokerError`` says so."""
    key = home.signing_key()
    now = now or datetime.now(UTC)
    with home.session(write=True) as session:
        batch = _prepare_batch(home, session, key, now, limit)
    if not batch:
        return []
    return _publish_batch(home, publish_many or one_by_one(publish), batch, again=False)


def _publish_batch(
    home: Home, many: PublishMany, batch: Sequence[_Prepared], *, again: bool
) -> list[Dispatched]:
    """Publish ``batch`` back to back, then drop the bytes of the commands the broker
    acknowledged in one transaction; ``BrokerError`` when it did not acknowledge them all
    (the others keep theirs). ``again``: the batch is being resent."""
    acked = many([(b.topic, b.payload) for b in batch])
    done = [b for b, ok in zip(batch, acked, strict=True) if ok]
    _confirmed(home, [b.row_id for b in done])
    for b in done:
        if again:
            log.info(
                "resent %s to %s (sequence %d): the device has not confirmed it yet",
                b.deployment_id, b.device, b.sequence,
            )  # fmt: skip
        else:
            log.info("sent %s to %s (sequence %d, %s)", b.deployment_id, b.device, b.sequence,
                     b.what)  # fmt: skip
    if len(done) < len(batch):
        raise BrokerError(
            f"the broker acknowledged {len(done)} of {len(batch)} orders"
            f"{' sent again' if again else ''}; the others are sent again once it is back"
        )
    return [Dispatched(b.deployment_id, b.device, b.sequence, b.topic) for b in done]


@dataclass(frozen=True)
class _Prepared:
    row_id: int
    deployment_id: str
    device: str
    sequence: int
    topic: str
    payload: bytes
    what: str  # for the log: the model, or what a rollback undoes


def _prepare_batch(
    home: Home, session: Session, key: Ed25519PrivateKey, now: datetime, limit: int
) -> list[_Prepared]:
    """The batch's rows, read and moved to ``sent`` in the caller's (write) transaction, so
    a pause or a second daemon that wrote first is seen. A row that cannot be built (its
    variant's artifact is gone) fails, with why, in the same transaction."""
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
    # A device never heard from has no session at the broker yet, so a command sent now
    # would be dropped; once it has connected, the broker queues for it offline.
    found = session.exec(
        select(Deployment, Device)
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
    prefix = home.settings.topic_prefix
    parts = _Parts(home, session)
    out = []
    for row, device in found:
        try:
            document, payload = _build(home, parts, row, device, key, now)
        except EdgefleetError as exc:
            log.error("deployment row %s cannot be sent: %s", row.id, exc)
            row.state = DeploymentState.FAILED.value
            row.error_code, row.error_message = exc.code, exc.message
            row.updated_at = now
            session.add(row)
            continue
        device.last_sequence = document.sequence
        row.sequence = document.sequence
        row.state = DeploymentState.SENT.value
        row.payload = payload  # committed with the state, so a lost publish can be resent
        row.command_sha256 = hashlib.sha256(payload).hexdigest()
        row.updated_at = row.sent_at = now
        session.add(device)
        session.add(row)
        what = document.model if isinstance(document, Manifest) else f"undoing {document.undoes}"
        out.append(
            _Prepared(
                row.id,  # type: ignore[arg-type]
                row.deployment_id,
                device.name,
                document.sequence,
                shared.command_topic(device.name, prefix),
                payload,
                str(what),
            )
        )
    return out


def _window_open(plan: Mapping[str, object] | None, now: datetime) -> bool:
    """Whether a rollout's maintenance window (if it has one) is open now."""
    if not plan or not plan.get("window"):
        return True
    window = RolloutPlan.model_validate(plan).window
    return window is None or window.is_open(now)


def resend_unconfirmed(
    home: Home,
    publish: Publish,
    *,
    publish_many: PublishMany | None = None,
    now: datetime | None = None,
) -> list[Dispatched]:
    """Publish again the stored command of every row still ``sent`` whose publish the broker
    never acknowledged, oldest first, in batches as ``dispatch_pending`` sends them.

    Such a row may never have reached the broker, and nothing else would ever send it.
    The same bytes are safe to send twice: the agent ignores a deployment id it knows.
    A row whose manifest has expired is left alone (logged): the agent would refuse it,
    and the controller cannot tell one never delivered from one the device is working
    on and has not reported yet. Rows sent before schema 3 have nothing stored to resend.
    ``BrokerError`` when the broker did not acknowledge them all (the rest keep their bytes).
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
    due: list[_Prepared] = []
    for row, device_name in rows:
        payload, sequence = row.payload, row.sequence
        assert payload is not None and sequence is not None  # both set with state sent
        try:
            expires_at = _expiry(payload)
        except MessageError as exc:
            log.error(
                "stored command of %s for %s is unusable: %s", row.deployment_id, device_name, exc
            )
            continue
        if expires_at <= now:
            log.warning(
                "%s for %s expired at %s unconfirmed; not resent (deploy again to retry)",
                row.deployment_id, device_name, expires_at.isoformat(),
            )  # fmt: skip
            continue
        topic = shared.command_topic(device_name, prefix)
        assert row.id is not None
        due.append(_Prepared(row.id, row.deployment_id, device_name, sequence, topic, payload, ""))
    many = publish_many or one_by_one(publish)
    resent: list[Dispatched] = []
    for start in range(0, len(due), BATCH):
        resent += _publish_batch(home, many, due[start : start + BATCH], again=True)
    return resent


def _confirmed(home: Home, row_ids: list[int]) -> None:
    """The broker has these commands: nothing to resend, and no reason to keep the bytes."""
    if not row_ids:
        return
    with home.session(write=True) as session:
        session.execute(
            sa.update(Deployment).where(col(Deployment.id).in_(row_ids)).values(payload=None)
        )


def _expiry(payload: bytes) -> datetime:
    """When the manifest inside a stored (self-signed, so trusted) command expires."""
    command = shared.decode(payload)
    if not isinstance(command, DeployCommand | RollbackCommand):
        raise MessageError(f"expected a deploy or rollback command, found {command.kind!r}")
    document = shared.parse_signed_document(command.signed.payload_bytes())
    if not isinstance(document, Manifest | RollbackOrder):
        raise MessageError(f"expected a manifest, found {type(document).__name__}")
    return document.expires_at


class _Parts:
    """What a batch's commands are built from, read once per variant and profile."""

    def __init__(self, home: Home, session: Session) -> None:
        self._home, self._session = home, session
        self._variants: dict[int, tuple[Variant, Artifact, ModelVersion, Model]] = {}
        self._runtimes: dict[str, RuntimeSettings] = {}

    def variant(self, variant_id: int) -> tuple[Variant, Artifact, ModelVersion, Model]:
        if variant_id not in self._variants:
            session = self._session
            variant = session.get(Variant, variant_id)
            if variant is None:
                raise RegistryError(f"variant {variant_id} does not exist")
            artifact = session.get(Artifact, variant.artifact_sha256)
            version = session.get(ModelVersion, variant.model_version_id)
            model = session.get(Model, version.model_id) if version else None
            if artifact is None or version is None or model is None:
                raise RegistryError(f"variant {variant.id} points at a missing artifact or version")
            self._variants[variant_id] = (variant, artifact, version, model)
        return self._variants[variant_id]

    def runtime(self, profile: str) -> RuntimeSettings:
        if profile not in self._runtimes:
            self._runtimes[profile] = _runtime(self._home, self._session, profile)
        return self._runtimes[profile]


def _build(
    home: Home,
    parts: _Parts,
    row: Deployment,
    device: Device,
    key: Ed25519PrivateKey,
    now: datetime,
) -> tuple[Manifest | RollbackOrder, bytes]:
    """The signed order for ``row``, with the device's next sequence, and its bytes."""
    sequence = device.last_sequence + 1
    ttl_s = home.settings.manifest_ttl_s
    if row.kind == DeploymentKind.ROLLBACK.value:
        order = build_rollback(
            deployment_id=row.deployment_id,
            device=device,
            sequence=sequence,
            undoes=row.undoes or "",
            key=key,
            ttl_s=ttl_s,
            now=now,
        )
        return order, rollback_payload(order, key)
    variant, artifact, version, model = parts.variant(row.variant_id)
    manifest = build_manifest(
        deployment_id=row.deployment_id,
        device=device,
        sequence=sequence,
        model=model,
        version=version,
        variant=variant,
        artifact=artifact,
        runtime=parts.runtime(device.profile),
        key=key,
        ttl_s=ttl_s,
        now=now,
    )
    return manifest, deploy_payload(manifest, key)


def _runtime(home: Home, session: Session, profile: str) -> RuntimeSettings:
    """The profile file's runtime settings; the registry's copy if the file is gone."""
    try:
        return home.profile(profile).runtime
    except EdgefleetError:
        row = session.get(Profile, profile)
        spec = (row.spec or {}).get("runtime") if row else None
        return RuntimeSettings.model_validate(spec) if spec else RuntimeSettings()
