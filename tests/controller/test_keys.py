"""Signing-key rotation on a real registry: `key rotate` records signed trust updates, the
daemon's job sends them in order (and again when the broker never took them), devices'
answers are ingested, and `--finish` waits for every device (or --force)."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest
from sqlmodel import col, select

from edgefleet import shared
from edgefleet.controller import Home
from edgefleet.controller import deploy as record_deployment
from edgefleet.controller.catalog import add_model
from edgefleet.controller.daemon import ingest_many
from edgefleet.controller.fleet import add_device
from edgefleet.controller.keys import (
    finish_rotation,
    list_keys,
    resend_trust_updates,
    rotate_keys,
    send_trust_updates,
    trust_status,
)
from edgefleet.controller.registry import (
    Device,
    DeviceCreate,
    DeviceTrustUpdate,
    SigningKey,
)
from edgefleet.controller.rollout import dispatch_pending
from edgefleet.shared import (
    DeviceState,
    EventMessage,
    StatusMessage,
    TrustCommand,
    TrustUpdate,
)
from edgefleet.shared.errors import (
    AlreadyExists,
    BrokerError,
    NotFound,
    RotationIncomplete,
)

from .conftest import Cli


@pytest.fixture
def devices(home: Home) -> list[str]:
    for name, profile in (("pi-1", "rpi4"), ("box-1", "x86-edge")):
        add_device(home, DeviceCreate(name=name, profile=profile))
    return ["box-1", "pi-1"]


def _hello(home: Home, *names: str) -> None:
    with home.session() as s:
        ingest_many(s, [(n, StatusMessage(device_id=n, online=True)) for n in names])


def _answer(home: Home, device: str, update_id: str, state: DeviceState, code: str | None = None):
    event = EventMessage(
        device_id=device, deployment_id=update_id, state=state, ok=code is None, error_code=code
    )
    with home.session() as s:
        ingest_many(s, [(device, event)])


def _rows(home: Home) -> list[tuple[str, int, str, str]]:
    with home.session() as s:
        rows = s.exec(
            select(Device.name, DeviceTrustUpdate.version, DeviceTrustUpdate.state,
                   DeviceTrustUpdate.signer_key_id)
            .join(Device, Device.id == DeviceTrustUpdate.device_id)
            .order_by(col(Device.name), col(DeviceTrustUpdate.version))
        ).all()  # fmt: skip
        return [tuple(r) for r in rows]


def _update_ids(home: Home) -> dict[tuple[str, int], str]:
    with home.session() as s:
        rows = s.exec(
            select(Device.name, DeviceTrustUpdate.version, DeviceTrustUpdate.update_id).join(
                Device, Device.id == DeviceTrustUpdate.device_id
            )
        ).all()
        return {(name, version): uid for name, version, uid in rows}


def _keys(home: Home) -> dict[str, str]:
    with home.session() as s:
        return {k.key_id: k.state for k in s.exec(select(SigningKey)).all()}


def _opened(payload: bytes, keyring: dict) -> TrustUpdate:
    command = shared.decode(payload)
    assert isinstance(command, TrustCommand)
    update = shared.parse_signed_document(shared.verify(command.signed, keyring))
    assert isinstance(update, TrustUpdate)
    return update


def test_rotate_records_an_update_per_device_signed_by_the_current_key(
    home: Home, devices: list[str]
) -> None:
    old = home.signing_key()
    old_id = shared.key_id(old.public_key())
    rotation = rotate_keys(home)
    assert (rotation.current, rotation.devices) == (old_id, devices)
    assert _keys(home) == {old_id: "current", rotation.next: "next"}
    assert _rows(home) == [("box-1", 1, "pending", old_id), ("pi-1", 1, "pending", old_id)]
    # the private keys are files named by key id, readable only by us; signing goes on with old
    keys_dir = home.settings.private_key_path.parent
    for kid in (old_id, rotation.next):
        assert stat.S_IMODE((keys_dir / f"{kid}.key").stat().st_mode) == 0o600
    assert shared.key_id(home.signing_key().public_key()) == old_id
    with home.session() as s:
        payloads = {r.device_id: r.payload for r in s.exec(select(DeviceTrustUpdate)).all()}
    keyring = shared.trusted_keyring([old.public_key()])
    updates = [_opened(p, keyring) for p in payloads.values()]
    assert sorted(u.device_id for u in updates) == devices
    assert all(u.key_ids() == [old_id, rotation.next] and u.revoked == [] for u in updates)
    assert [k.state for k in list_keys(home)] == ["current", "next"]

    before = (_keys(home), _rows(home))
    with pytest.raises(AlreadyExists, match="in progress"):
        rotate_keys(home)
    assert (_keys(home), _rows(home)) == before


def test_a_device_enrolled_during_a_rotation_trusts_both_keys(
    home: Home, devices: list[str]
) -> None:
    rotation = rotate_keys(home)
    enrolled = add_device(home, DeviceCreate(name="late-1", profile="rpi4"))
    trusted = tomllib.loads(enrolled.agent_config)["trusted_keys"]
    ids = [shared.key_id(shared.load_public_key(k)) for k in trusted]
    assert ids == [rotation.current, rotation.next]


def test_finish_waits_for_every_device_or_force(home: Home, devices: list[str]) -> None:
    old_id = shared.key_id(home.signing_key().public_key())
    rotation = rotate_keys(home)
    new_id = rotation.next
    assert new_id is not None
    with pytest.raises(RotationIncomplete, match="box-1, pi-1"):
        finish_rotation(home)
    ids = _update_ids(home)
    _answer(home, "pi-1", ids[("pi-1", 1)], DeviceState.TRUST_UPDATED)
    before = (_keys(home), _rows(home))
    with pytest.raises(RotationIncomplete, match=r"1 device\(s\) .*: box-1;"):
        finish_rotation(home)
    assert (_keys(home), _rows(home)) == before  # refused, and nothing changed

    done = finish_rotation(home, force=True)
    assert (done.current, done.retired, done.unconfirmed) == (new_id, old_id, ["box-1"])
    assert _keys(home) == {old_id: "retired", new_id: "current"}
    assert _rows(home) == [
        ("box-1", 1, "pending", old_id),
        ("box-1", 2, "pending", new_id),
        ("pi-1", 1, "confirmed", old_id),
        ("pi-1", 2, "pending", new_id),
    ]
    # everything signs with the new key now; the old private key is gone from the home
    new_key = home.signing_key()
    assert shared.key_id(new_key.public_key()) == new_id
    keys_dir = home.settings.private_key_path.parent
    assert not (keys_dir / f"{old_id}.key").exists()
    assert (
        shared.key_id(
            shared.load_private_key(home.settings.private_key_path.read_bytes()).public_key()
        )
        == new_id
    )
    assert (
        shared.key_id(shared.load_public_key(home.settings.public_key_path.read_text())) == new_id
    )
    with home.session() as s:
        second = s.exec(select(DeviceTrustUpdate).where(DeviceTrustUpdate.version == 2)).all()
    for row in second:
        update = _opened(row.payload, shared.trusted_keyring([new_key.public_key()]))
        assert (update.key_ids(), update.revoked) == ([new_id], [old_id])
    with pytest.raises(NotFound, match="no key rotation"):
        finish_rotation(home)


def test_after_finish_deployments_are_signed_with_the_new_key(
    home: Home, devices: list[str], model_file: Path
) -> None:
    add_model(home, model_file, name="digits", version="1.0.0")
    rotate_keys(home)
    done = finish_rotation(home, force=True)
    _hello(home, "pi-1")
    record_deployment(home, "digits:1.0.0", devices=["pi-1"])
    published: list[bytes] = []
    dispatch_pending(home, lambda t, p: published.append(p))
    (payload,) = published
    assert shared.decode(payload).signed.key_id == done.current


def test_the_trust_job_sends_each_devices_updates_in_order_once_it_has_connected(
    home: Home, devices: list[str]
) -> None:
    rotate_keys(home)
    finish_rotation(home, force=True)
    assert send_trust_updates(home, lambda t, p: None) == []  # nobody connected yet
    _hello(home, "pi-1")
    published: list[tuple[str, bytes]] = []
    sent = send_trust_updates(home, lambda t, p: published.append((t, p)))
    assert [(s.device, s.version) for s in sent] == [("pi-1", 1), ("pi-1", 2)]
    assert [t for t, _ in published] == [shared.command_topic("pi-1")] * 2
    assert [r[:3] for r in _rows(home)] == [
        ("box-1", 1, "pending"), ("box-1", 2, "pending"), ("pi-1", 1, "sent"), ("pi-1", 2, "sent"),
    ]  # fmt: skip
    with home.session() as s:  # the broker has them: nothing kept to resend
        assert [r.payload for r in s.exec(select(DeviceTrustUpdate)) if r.state == "sent"] == [
            None,
            None,
        ]
    assert resend_trust_updates(home, lambda t, p: None) == []


def test_an_update_the_broker_never_took_is_resent_byte_for_byte_before_later_ones(
    home: Home, devices: list[str]
) -> None:
    rotate_keys(home)
    finish_rotation(home, force=True)
    _hello(home, "box-1")
    attempted: list[bytes] = []

    def down(topic: str, payload: bytes) -> None:
        attempted.append(payload)
        raise BrokerError("the broker never took it")

    with pytest.raises(BrokerError):
        send_trust_updates(home, down)
    assert [r[:3] for r in _rows(home) if r[0] == "box-1"] == [
        ("box-1", 1, "sent"), ("box-1", 2, "pending"),
    ]  # fmt: skip
    published: list[bytes] = []
    (again,) = resend_trust_updates(home, lambda t, p: published.append(p))
    assert (again.device, again.version, published) == ("box-1", 1, attempted)
    (later,) = send_trust_updates(home, lambda t, p: published.append(p))
    assert (later.device, later.version) == ("box-1", 2)


def test_ingest_records_the_devices_answers(home: Home, devices: list[str]) -> None:
    rotate_keys(home)
    ids = _update_ids(home)
    _answer(home, "pi-1", ids[("pi-1", 1)], DeviceState.TRUST_UPDATED)
    _answer(home, "box-1", ids[("box-1", 1)], DeviceState.REJECTED, "expired")
    # a replay refused after confirmation, and answers from the wrong device, change nothing
    _answer(home, "pi-1", ids[("pi-1", 1)], DeviceState.REJECTED, "replayed_sequence")
    _answer(home, "pi-1", ids[("box-1", 1)], DeviceState.TRUST_UPDATED)
    status = {t.device: (t.version, t.state, t.error_code) for t in trust_status(home)}
    assert status == {"pi-1": (1, "confirmed", None), "box-1": (1, "failed", "expired")}
    with pytest.raises(RotationIncomplete, match="box-1"):
        finish_rotation(home)


def test_key_commands(cli: Cli, initialised: Path) -> None:
    (only,) = json.loads(cli.ok("key", "list", "--json").output)
    assert only["state"] == "current" and only["retired_at"] is None
    cli.ok("device", "add", "pi-1", "--profile", "rpi4", "--out", str(initialised / "a.toml"))
    out = cli.ok("key", "rotate").output
    assert f"introduced by key {only['key_id']}" in out and "1 device(s)" in out
    listed = json.loads(cli.ok("key", "list", "--json").output)
    assert [(k["key_id"] == only["key_id"], k["state"]) for k in listed] == [
        (True, "current"), (False, "next"),
    ]  # fmt: skip
    (row,) = json.loads(cli.ok("key", "status", "--json").output)
    assert (row["device"], row["version"], row["state"]) == ("pi-1", 1, "pending")

    refused = cli("key", "rotate", "--finish")
    assert refused.exit_code == 1
    assert "have not confirmed" in refused.output and "pi-1" in refused.output
    assert cli("key", "rotate", "--force").exit_code == 2
    again = cli("key", "rotate")
    assert again.exit_code == 1 and "in progress" in again.output

    done = json.loads(cli.ok("key", "rotate", "--finish", "--force", "--json").output)
    assert (done["retired"], done["unconfirmed"]) == (only["key_id"], ["pi-1"])
    states = {k["key_id"]: k["state"] for k in json.loads(cli.ok("key", "list", "--json").output)}
    assert states == {only["key_id"]: "retired", done["current"]: "current"}
    assert "retired" in cli.ok("key", "list").output
