"""Trust updates in-process: the keys a device trusts change only forwards, by a signed update
from a key it trusts now, and a revoked key signs nothing the device accepts, ever again."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet import shared
from edgefleet.shared import DeviceState
from edgefleet.shared.errors import (
    KeyRevoked,
    ManifestExpired,
    MessageError,
    ReplayedSequence,
    UnknownKeyError,
    WrongDevice,
)

from .inprocess import Fleet, inbound

S = DeviceState
OLD, NEW, STRANGER = (shared.generate_private_key() for _ in range(3))


def _id(key: Ed25519PrivateKey) -> str:
    return shared.key_id(key.public_key())


@pytest.fixture
def trusting(fleet: Fleet) -> Fleet:
    fleet.key = OLD  # agent.toml trusts OLD
    fleet.config = type(fleet.config)(
        **{**vars(fleet.config), "trusted_keys": (shared.public_key_to_text(OLD.public_key()),)}
    )
    return fleet


def _introduce(f: Fleet) -> tuple[str, bytes]:
    return f.trust([OLD, NEW])


def _retire(f: Fleet) -> tuple[str, bytes]:
    return f.trust([NEW], signer=NEW, revoked=[OLD])


def _introduce_remembered(f: Fleet) -> tuple[str, bytes]:
    f.__dict__["last_trust"] = _introduce(f)
    return f.__dict__["last_trust"]


def _again(f: Fleet) -> tuple[str, bytes]:
    return f.__dict__["last_trust"]


Feed = Callable[[Fleet], tuple[str, bytes]]
# case, what is fed (the last one is watched), its events, the trust version after, keys after
CASES: list[tuple[str, list[Feed], list[tuple[DeviceState, str | None]], int, set[str]]] = [
    ("accepted", [_introduce], [(S.TRUST_UPDATED, None)], 1, {_id(OLD), _id(NEW)}),
    ("rotation finished", [_introduce, _retire], [(S.TRUST_UPDATED, None)], 2, {_id(NEW)}),
    (
        "replayed: the same update again is answered and changes nothing",
        [_introduce_remembered, _again],
        [(S.TRUST_UPDATED, None), (S.TRUST_UPDATED, None)],
        1,
        {_id(OLD), _id(NEW)},
    ),
    (
        "a lower version",
        [_introduce, _retire, lambda f: f.trust([NEW], signer=NEW, version=1)],
        [(S.REJECTED, ReplayedSequence.code)],
        2,
        {_id(NEW)},
    ),
    (
        "the same version with other keys",
        [_introduce, lambda f: f.trust([OLD], version=1)],
        [(S.REJECTED, ReplayedSequence.code)],
        1,
        {_id(OLD), _id(NEW)},
    ),
    (
        "for another device",
        [lambda f: f.trust([OLD, NEW], device_id="someone-else")],
        [(S.REJECTED, WrongDevice.code)],
        0,
        {_id(OLD)},
    ),
    (
        "expired",
        [lambda f: f.trust([OLD, NEW], expires_at=datetime.now(UTC) - timedelta(seconds=1))],
        [(S.REJECTED, ManifestExpired.code)],
        0,
        {_id(OLD)},
    ),
    (
        "signed by a key the device does not trust",
        [lambda f: f.trust([STRANGER], signer=STRANGER)],
        [(S.REJECTED, UnknownKeyError.code)],
        0,
        {_id(OLD)},
    ),
    (
        "signed by a revoked key",
        [
            _introduce,
            lambda f: f.trust([OLD, NEW], revoked=[STRANGER]),
            _retire,
            lambda f: f.trust([OLD, NEW], signer=OLD),
        ],
        [(S.REJECTED, KeyRevoked.code)],
        3,
        {_id(NEW)},
    ),
    (
        "trusting only revoked keys",
        [_introduce, _retire, lambda f: f.trust([OLD], signer=NEW)],
        [(S.REJECTED, KeyRevoked.code)],
        2,
        {_id(NEW)},
    ),
]


def _watched(fleet: Fleet, update_id: str) -> list[tuple[DeviceState, str | None]]:
    """The events of ``update_id``, and the rejections that could not name it (bad signer)."""
    return [
        (e.state, e.error_code)
        for e in fleet.link.events()
        if e.deployment_id == update_id or (e.deployment_id == "" and e.error_code)
    ]


@pytest.mark.parametrize(
    ("name", "feed", "events", "version", "keys"), CASES, ids=[c[0] for c in CASES]
)
def test_trust_table(trusting: Fleet, name, feed, events, version, keys) -> None:
    agent = trusting.agent()
    for step in feed:
        update_id, payload = step(trusting)
        agent.handle(inbound(payload))
    assert _watched(trusting, update_id) == events
    assert agent.state.trust.version == version
    assert set(agent.keyring) == keys
    # persisted before it was answered: a restart trusts the same keys
    state_file = trusting.config.state_dir / "state.json"
    saved = json.loads(state_file.read_text()) if state_file.exists() else {}
    assert saved.get("trust", {}).get("version", 0) == version
    assert set(trusting.agent().keyring) == keys


def test_a_redelivered_update_changes_nothing_on_disk(trusting: Fleet) -> None:
    agent = trusting.agent()
    _, payload = _introduce(trusting)
    agent.handle(inbound(payload))
    state_file = trusting.config.state_dir / "state.json"
    before = state_file.stat().st_mtime_ns, state_file.read_bytes()
    agent.handle(inbound(payload))
    assert (state_file.stat().st_mtime_ns, state_file.read_bytes()) == before
    details = [e.details for e in trusting.link.events() if e.state is S.TRUST_UPDATED]
    assert len(details) == 2 and details[0] == details[1]
    assert details[0]["version"] == 1
    assert details[0]["keys"] == f"{_id(OLD)},{_id(NEW)}"


def test_after_a_rotation_only_the_new_key_deploys(trusting: Fleet) -> None:
    agent = trusting.agent()
    for step in (_introduce, _retire):
        agent.handle(inbound(step(trusting)[1]))
    old_id, old = trusting.deploy("v1", signer=OLD)
    agent.handle(inbound(old))
    (refused,) = [e for e in trusting.link.events() if e.state is S.REJECTED]
    assert (refused.error_code, agent.slot.get()) == (KeyRevoked.code, None)
    assert _id(OLD) in refused.message

    new_id, new = trusting.deploy("v2", signer=NEW)
    agent.handle(inbound(new))
    assert trusting.link.events(new_id)[-1].state is S.COMMITTED
    assert trusting.link.events(old_id) == []


def test_a_revoked_key_in_agent_toml_never_comes_back(trusting: Fleet) -> None:
    """agent.toml still names OLD after the rotation: restarts do not trust it again."""
    agent = trusting.agent()
    for step in (_introduce, _retire):
        agent.handle(inbound(step(trusting)[1]))
    restarted = trusting.agent()
    assert _id(OLD) in restarted.configured_keys
    restarted.handle(inbound(trusting.deploy("v1", signer=OLD)[1]))
    assert [(e.state, e.error_code) for e in trusting.link.events()] == [
        (S.REJECTED, KeyRevoked.code)
    ]


def test_a_manifest_signed_by_the_next_key_deploys_during_the_rotation(trusting: Fleet) -> None:
    agent = trusting.agent()
    agent.handle(inbound(_introduce(trusting)[1]))
    deployment_id, payload = trusting.deploy("v1", signer=NEW)
    agent.handle(inbound(payload))
    assert trusting.link.events(deployment_id)[-1].state is S.COMMITTED


def test_a_trust_update_inside_a_deploy_command_is_refused(trusting: Fleet) -> None:
    agent = trusting.agent()
    update_id, payload = _introduce(trusting)
    command = json.loads(payload)
    command["kind"] = "deploy"
    agent.handle(inbound(json.dumps(command).encode()))
    assert [(e.state, e.error_code) for e in trusting.link.events(update_id)] == [
        (S.REJECTED, MessageError.code)
    ]
    assert agent.state.trust.version == 0


def test_a_refusal_without_a_readable_id_names_the_command_by_its_digest(trusting: Fleet) -> None:
    """A manifest signed by a key the device does not trust cannot be read, so the refusal
    carries no deployment id; the digest of the command's bytes lets the controller match
    it to the order it sent."""
    agent = trusting.agent()
    _, payload = trusting.deploy("v1", signer=STRANGER)
    agent.handle(inbound(payload))
    (refusal,) = [e for e in trusting.link.events() if e.state is S.REJECTED]
    assert refusal.deployment_id == "" and refusal.error_code == UnknownKeyError.code
    assert refusal.details["command_sha256"] == shared.sha256_bytes(payload)
