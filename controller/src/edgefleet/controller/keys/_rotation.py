"""Signing-key rotation, TUF-style: ``rotate`` makes the next key and has the current one
introduce it to every device; ``finish`` (once devices confirmed) makes it current, retires
the old key and has the new one revoke it on every device."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from edgefleet.shared import generate_private_key, key_id, public_key_to_text
from edgefleet.shared.errors import AlreadyExists, NotFound, RotationIncomplete

from ..home import Home, key_path, make_home_key_current, read_key, write_new_key
from ..registry import (
    Device,
    DeviceTrustUpdate,
    KeyState,
    SigningKey,
    TrustUpdateState,
    as_utc,
)
from ._updates import record_trust_updates


@dataclass(frozen=True)
class KeyPublic:
    key_id: str
    state: str
    public_key: str
    created_at: datetime | None
    retired_at: datetime | None


@dataclass(frozen=True)
class Rotation:
    """What ``rotate_keys`` or ``finish_rotation`` did."""

    current: str  # the key id that signs new manifests now
    next: str | None  # the key id being introduced (None once finished)
    retired: str | None
    devices: list[str]  # the devices a trust update was recorded for
    unconfirmed: list[str]  # devices that had not confirmed when --force finished anyway


@dataclass(frozen=True)
class DeviceTrust:
    """A device's newest trust update, as the registry knows it."""

    device: str
    version: int
    update_id: str
    state: str
    signer_key_id: str
    error_code: str | None
    updated_at: datetime | None


def list_keys(home: Home) -> list[KeyPublic]:
    """The registry's keys, current first; a home that never rotated shows its one key."""
    with home.session() as session:
        rows = session.exec(select(SigningKey).order_by(col(SigningKey.created_at))).all()
        keys = [
            KeyPublic(r.key_id, r.state, r.public_key, as_utc(r.created_at), as_utc(r.retired_at))
            for r in rows
        ]
    if not keys:
        public = home.signing_key().public_key()
        keys = [
            KeyPublic(
                key_id(public), KeyState.CURRENT.value, public_key_to_text(public), None, None
            )
        ]
    order = {KeyState.CURRENT.value: 0, KeyState.NEXT.value: 1, KeyState.RETIRED.value: 2}
    return sorted(keys, key=lambda k: order.get(k.state, 3))


def trust_status(home: Home) -> list[DeviceTrust]:
    """Every device with its newest trust update (devices never sent one are left out)."""
    with home.session() as session:
        rows = session.exec(
            select(DeviceTrustUpdate, Device.name)
            .join(Device, Device.id == DeviceTrustUpdate.device_id)  # type: ignore[arg-type]
            .order_by(col(Device.name), col(DeviceTrustUpdate.version))
        ).all()
        newest = {
            name: DeviceTrust(
                device=name,
                version=r.version,
                update_id=r.update_id,
                state=r.state,
                signer_key_id=r.signer_key_id,
                error_code=r.error_code,
                updated_at=as_utc(r.updated_at),
            )
            for r, name in rows
        }
    return list(newest.values())


def rotate_keys(home: Home) -> Rotation:
    """Make the next key and record, for every device, a trust update {current, next} signed
    by the current key. The next key's file is written first (mode 0600) and removed if the
    registry refuses the rotation."""
    current_key = home.signing_key()
    current = key_id(current_key.public_key())
    with home.session() as session:
        _refuse_a_second_rotation(session)
    # The home's first rotation: the current key gets a file named by its id, like the rest.
    current_path = key_path(home.settings, current)
    if not current_path.exists():
        write_new_key(current_path, current_key)
    next_key = generate_private_key()
    nxt = key_id(next_key.public_key())
    next_path = key_path(home.settings, nxt)
    write_new_key(next_path, next_key)
    try:
        with home.session(write=True) as session:
            _refuse_a_second_rotation(session)
            if session.get(SigningKey, current) is None:
                session.add(_key_row(current, current_key, KeyState.CURRENT))
            session.add(_key_row(nxt, next_key, KeyState.NEXT))
            devices = session.exec(select(Device).order_by(col(Device.name))).all()
            keys = [public_key_to_text(k.public_key()) for k in (current_key, next_key)]
            record_trust_updates(
                session, devices, rotation=nxt, keys=keys, revoked=[], signer=current_key
            )
            names = [d.name for d in devices]
    except BaseException:
        next_path.unlink(missing_ok=True)
        raise
    return Rotation(current=current, next=nxt, retired=None, devices=names, unconfirmed=[])


def finish_rotation(home: Home, *, force: bool = False) -> Rotation:
    """Make the next key current once every device confirmed it (or ``force``), retire the
    old one, and record for every device a trust update {new} revoking the old key, signed
    by the new one. Then the old key's private file is deleted."""
    with home.session(write=True) as session:
        old = _one(session, KeyState.CURRENT)
        new = _one(session, KeyState.NEXT)
        if new is None or old is None:
            raise NotFound("no key rotation is in progress: run `edgefleet key rotate` first")
        unconfirmed = _unconfirmed(session, new.key_id)
        if unconfirmed and not force:
            raise RotationIncomplete(
                f"{len(unconfirmed)} device(s) have not confirmed key {new.key_id}: "
                f"{', '.join(unconfirmed)}; wait for them, or finish with --force "
                "(they still receive both updates, in order, when they return)"
            )
        new_key = read_key(key_path(home.settings, new.key_id), new.key_id)
        now = datetime.now(UTC)
        old.state, old.retired_at = KeyState.RETIRED.value, now
        new.state = KeyState.CURRENT.value
        session.add(old)
        session.add(new)
        session.flush()
        devices = session.exec(select(Device).order_by(col(Device.name))).all()
        record_trust_updates(
            session,
            devices,
            rotation=new.key_id,
            keys=[new.public_key],
            revoked=[old.key_id],
            signer=new_key,
        )
        names = [d.name for d in devices]
        old_id, new_id = old.key_id, new.key_id
    # committed: from here on everything signs with the new key; the old one must not linger
    make_home_key_current(home.settings, new_key)
    with contextlib.suppress(FileNotFoundError):
        key_path(home.settings, old_id).unlink()
    return Rotation(
        current=new_id, next=None, retired=old_id, devices=names, unconfirmed=unconfirmed
    )


def _key_row(kid: str, key: Ed25519PrivateKey, state: KeyState) -> SigningKey:
    public = key.public_key()
    return SigningKey(key_id=kid, public_key=public_key_to_text(public), state=state.value)


def _one(session: Session, state: KeyState) -> SigningKey | None:
    return session.exec(select(SigningKey).where(SigningKey.state == state.value)).first()


def _refuse_a_second_rotation(session: Session) -> None:
    running = _one(session, KeyState.NEXT)
    if running is not None:
        raise AlreadyExists(
            f"a rotation to key {running.key_id} is in progress: "
            "finish it with `edgefleet key rotate --finish`"
        )


def _unconfirmed(session: Session, rotation: str) -> list[str]:
    """Devices whose update introducing ``rotation`` is not confirmed."""
    rows = session.exec(
        select(Device.name)
        .join(DeviceTrustUpdate, Device.id == DeviceTrustUpdate.device_id)  # type: ignore[arg-type]
        .where(
            DeviceTrustUpdate.rotation == rotation,
            DeviceTrustUpdate.state != TrustUpdateState.CONFIRMED.value,
        )
        .order_by(col(Device.name))
    ).all()
    return list(rows)
