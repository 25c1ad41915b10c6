"""Trust updates for devices: recorded signed (one row per device and version), sent by the
daemon in version order, sent again when the broker never acknowledged them.

Each is signed when it is recorded, by the key the device trusts at that step of the
rotation (the current key introduces the next; the next, once current, revokes the old),
so a row sent days later still carries the right signature and the old private key can be
deleted when the rotation finishes. The command bytes are committed with the row; ``sent``
is committed before publishing, and the bytes are dropped once the broker has them (its
persistent session holds them for the device), exactly like deployment rows.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, func, select

from edgefleet import shared
from edgefleet.shared import TrustCommand, TrustUpdate

from ..home import Home
from ..registry import Device, DeviceTrustUpdate, TrustUpdateState
from ..rollout import Publish

log = logging.getLogger("edgefleet.controller.keys")

# A device may be away for a while: the agent's broker session lasts 7 days by default, and
# an update that outlives it would never reach the device anyway.
TRUST_TTL = timedelta(days=30)


@dataclass(frozen=True)
class TrustSent:
    update_id: str
    device: str
    version: int
    topic: str


def trust_payload(
    *,
    device: str,
    version: int,
    keys: list[str],
    revoked: list[str],
    signer: Ed25519PrivateKey,
    now: datetime,
) -> tuple[TrustUpdate, bytes]:
    update = TrustUpdate(
        update_id=f"trust-{uuid.uuid4().hex[:12]}",
        device_id=device,
        key_id=shared.key_id(signer.public_key()),
        issued_at=now,
        expires_at=now + TRUST_TTL,
        version=version,
        keys=keys,
        revoked=revoked,
    )
    blob = shared.sign(shared.encode_document(update), signer)
    return update, shared.encode(TrustCommand(signed=blob))


def record_trust_updates(
    session: Session,
    devices: Iterable[Device],
    *,
    rotation: str,
    keys: list[str],
    revoked: list[str],
    signer: Ed25519PrivateKey,
) -> list[DeviceTrustUpdate]:
    """One signed update per device, its version one above the device's last, in ``session``."""
    now = datetime.now(UTC)
    rows = []
    for device in devices:
        assert device.id is not None
        last = session.exec(
            select(func.max(DeviceTrustUpdate.version)).where(
                DeviceTrustUpdate.device_id == device.id
            )
        ).one()
        version = (last or 0) + 1
        update, payload = trust_payload(
            device=device.name, version=version, keys=keys, revoked=revoked, signer=signer, now=now
        )
        row = DeviceTrustUpdate(
            update_id=update.update_id,
            device_id=device.id,
            version=version,
            rotation=rotation,
            signer_key_id=update.key_id,
            payload=payload,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        rows.append(row)
    return rows


def send_trust_updates(home: Home, publish: Publish, *, limit: int = 100) -> list[TrustSent]:
    """Publish pending trust updates, each device's in version order, to devices that have
    connected at least once (before that the broker has no session to queue them in)."""
    with home.session() as session:
        rows = session.exec(
            select(DeviceTrustUpdate.id, Device.name)
            .join(Device, Device.id == DeviceTrustUpdate.device_id)  # type: ignore[arg-type]
            .where(
                DeviceTrustUpdate.state == TrustUpdateState.PENDING.value,
                col(Device.last_seen).is_not(None),
            )
            .order_by(col(DeviceTrustUpdate.device_id), col(DeviceTrustUpdate.version))
            .limit(limit)
        ).all()
    sent: list[TrustSent] = []
    for row_id, device_name in rows:
        with home.session(write=True) as session:
            row = session.get(DeviceTrustUpdate, row_id)
            if row is None or row.state != TrustUpdateState.PENDING.value or not row.payload:
                continue
            row.state = TrustUpdateState.SENT.value  # before the publish: state first
            row.updated_at = datetime.now(UTC)
            session.add(row)
            update_id, version, payload = row.update_id, row.version, row.payload
        topic = shared.command_topic(device_name, home.settings.topic_prefix)
        publish(topic, payload)  # a failure stops here: later versions wait their turn
        _broker_has_it(home, row_id)  # type: ignore[arg-type]
        log.info("sent trust update %s (version %d) to %s", update_id, version, device_name)
        sent.append(TrustSent(update_id, device_name, version, topic))
    return sent


def resend_trust_updates(home: Home, publish: Publish) -> list[TrustSent]:
    """Publish again every ``sent`` update whose publish the broker never acknowledged.

    The same bytes are safe twice: the agent answers a redelivered update again and
    changes nothing. An expired one is left alone (the agent would refuse it)."""
    now = datetime.now(UTC)
    with home.session() as session:
        rows = session.exec(
            select(DeviceTrustUpdate, Device.name)
            .join(Device, Device.id == DeviceTrustUpdate.device_id)  # type: ignore[arg-type]
            .where(
                DeviceTrustUpdate.state == TrustUpdateState.SENT.value,
                col(DeviceTrustUpdate.payload).is_not(None),
            )
            .order_by(col(DeviceTrustUpdate.device_id), col(DeviceTrustUpdate.version))
        ).all()
    resent: list[TrustSent] = []
    for row, device_name in rows:
        row_id, update_id, version, payload = row.id, row.update_id, row.version, row.payload
        assert payload is not None
        if _expires_at(payload) <= now:
            log.warning("trust update %s for %s expired unconfirmed", update_id, device_name)
            continue
        topic = shared.command_topic(device_name, home.settings.topic_prefix)
        publish(topic, payload)
        _broker_has_it(home, row_id)  # type: ignore[arg-type]
        log.info("resent trust update %s (version %d) to %s", update_id, version, device_name)
        resent.append(TrustSent(update_id, device_name, version, topic))
    return resent


def _expires_at(payload: bytes) -> datetime:
    command = shared.decode(payload)
    assert isinstance(command, TrustCommand)  # written by record_trust_updates
    return shared.parse_signed_document(command.signed.payload_bytes()).expires_at


def _broker_has_it(home: Home, row_id: int) -> None:
    with home.session(write=True) as session:
        row = session.get(DeviceTrustUpdate, row_id)
        if row is not None:
            row.payload = None
            session.add(row)
