"""Trust updates: the signed set of keys a device trusts, and the checks a device makes."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet import shared
from edgefleet.shared import (
    TrustCommand,
    TrustUpdate,
    check_trust_update,
    decode,
    encode,
    encode_document,
    key_id,
    parse_signed_document,
    public_key_to_text,
    sign,
    trusted_keyring,
    verify,
)
from edgefleet.shared.errors import (
    KeyRevoked,
    ManifestExpired,
    MessageError,
    ReplayedSequence,
    SignatureError,
    UnknownKeyError,
    WrongDevice,
)

from .conftest import DEVICE, NOW


def _update(
    signer: Ed25519PrivateKey, keys: list[Ed25519PrivateKey], **changes: Any
) -> TrustUpdate:
    fields: dict[str, Any] = {
        "device_id": DEVICE,
        "key_id": key_id(signer.public_key()),
        "issued_at": NOW - timedelta(minutes=1),
        "expires_at": NOW + timedelta(days=30),
        "update_id": "trust-1",
        "version": 1,
        "keys": [public_key_to_text(k.public_key()) for k in keys],
    }
    fields.update(changes)
    return TrustUpdate(**fields)


def _check(update: TrustUpdate, signer: Ed25519PrivateKey, **kw: Any) -> None:
    kw.setdefault("device_id", DEVICE)
    kw.setdefault("version", 0)
    kw.setdefault("now", NOW)
    check_trust_update(update, sign(encode_document(update), signer), **kw)


def test_round_trip_through_signature_and_command(
    private_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey
) -> None:
    update = _update(private_key, [private_key, other_key], revoked=["0123456789abcdef"])
    command = decode(encode(TrustCommand(signed=sign(encode_document(update), private_key))))
    assert isinstance(command, TrustCommand) and command.kind == "trust"
    payload = verify(command.signed, trusted_keyring([private_key.public_key()]))
    parsed = parse_signed_document(payload)
    assert parsed == update and isinstance(parsed, TrustUpdate)
    assert json.loads(payload)["kind"] == "trust"
    assert parsed.key_ids() == [key_id(private_key.public_key()), key_id(other_key.public_key())]
    assert set(parsed.keyring()) == set(parsed.key_ids())
    _check(parsed, private_key)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"keys": []}, "keys"),
        ({"keys": ["bm90IGEga2V5"]}, "32 raw bytes"),
        ({"keys": ["/etc/passwd"]}, "32 raw bytes"),  # never read as a file path
        ({"keys": ["-----BEGIN PUBLIC KEY-----"]}, "32 raw bytes"),
        ({"revoked": ["NOT-A-KEY-ID"]}, "16 lowercase hex"),
        ({"version": 0}, "version"),
        ({"update_id": "../x"}, "update_id"),
    ],
)
def test_malformed_updates_are_refused_when_parsed(
    private_key: Ed25519PrivateKey, change: dict[str, Any], why: str
) -> None:
    raw = json.loads(encode_document(_update(private_key, [private_key])))
    raw.update(change)
    with pytest.raises(MessageError, match=why):
        parse_signed_document(json.dumps(raw).encode())


def test_checks(private_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey) -> None:
    update = _update(private_key, [private_key, other_key], version=3)
    _check(update, private_key, version=2)
    with pytest.raises(ReplayedSequence, match=r"trust version 3 .* 3"):
        _check(update, private_key, version=3)
    with pytest.raises(ReplayedSequence):
        _check(update, private_key, version=9)
    with pytest.raises(WrongDevice):
        _check(update, private_key, device_id="rpi-2")
    with pytest.raises(ManifestExpired):
        _check(update, private_key, now=NOW + timedelta(days=31))
    with pytest.raises(SignatureError, match="different key"):
        _check(update, other_key)
    revoking_itself = _update(
        private_key, [private_key], revoked=[key_id(private_key.public_key())]
    )
    with pytest.raises(MessageError, match="revokes"):
        _check(revoking_itself, private_key)


def test_a_revoked_key_is_refused_even_when_the_keyring_holds_it(
    private_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey
) -> None:
    blob = sign(b"{}", private_key)
    keyring = trusted_keyring([private_key.public_key()])
    assert verify(blob, keyring, revoked=[key_id(other_key.public_key())]) == b"{}"
    with pytest.raises(KeyRevoked) as info:
        verify(blob, keyring, revoked=[key_id(private_key.public_key())])
    assert info.value.code == "revoked_key"
    assert isinstance(info.value, SignatureError)
    with pytest.raises(UnknownKeyError):
        verify(blob, trusted_keyring([other_key.public_key()]))


def test_raw_public_key_reads_only_base64(private_key: Ed25519PrivateKey) -> None:
    text = public_key_to_text(private_key.public_key())
    assert key_id(shared.raw_public_key(text)) == key_id(private_key.public_key())
