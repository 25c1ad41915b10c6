"""Ed25519 signing of exact bytes and verification against pinned keys."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.shared import (
    SignedBlob,
    generate_private_key,
    key_id,
    load_private_key,
    load_public_key,
    private_key_to_pem,
    public_key_to_text,
    sign,
    trusted_keyring,
    verify,
)
from edgefleet.shared.errors import ConfigError, SignatureError, UnknownKeyError

PAYLOAD = b'{"kind":"deploy","sequence":3}'


def _pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_round_trip(private_key: Ed25519PrivateKey) -> None:
    blob = sign(PAYLOAD, private_key)
    assert blob.key_id == key_id(private_key.public_key())
    assert blob.payload_bytes() == PAYLOAD
    assert verify(blob, trusted_keyring([private_key.public_key()])) == PAYLOAD


def test_round_trip_through_json(private_key: Ed25519PrivateKey) -> None:
    blob = SignedBlob.model_validate_json(sign(PAYLOAD, private_key).model_dump_json())
    assert verify(blob, trusted_keyring([private_key.public_key()])) == PAYLOAD


def test_keyring_with_several_keys(
    private_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey
) -> None:
    keyring = trusted_keyring([other_key.public_key(), private_key.public_key()])
    assert len(keyring) == 2
    assert verify(sign(PAYLOAD, private_key), keyring) == PAYLOAD
    assert verify(sign(PAYLOAD, other_key), keyring) == PAYLOAD


@pytest.mark.parametrize("index", [0, 5, len(PAYLOAD) - 1])
def test_flipped_payload_byte(private_key: Ed25519PrivateKey, index: int) -> None:
    blob = sign(PAYLOAD, private_key)
    tampered = bytearray(PAYLOAD)
    tampered[index] ^= 0x01
    forged = blob.model_copy(update={"payload": base64.b64encode(bytes(tampered)).decode()})
    with pytest.raises(SignatureError, match="does not match") as info:
        verify(forged, trusted_keyring([private_key.public_key()]))
    assert not isinstance(info.value, UnknownKeyError)


def test_flipped_signature_byte(private_key: Ed25519PrivateKey) -> None:
    blob = sign(PAYLOAD, private_key)
    sig = bytearray(base64.b64decode(blob.signature))
    sig[0] ^= 0x80
    forged = blob.model_copy(update={"signature": base64.b64encode(bytes(sig)).decode()})
    with pytest.raises(SignatureError):
        verify(forged, trusted_keyring([private_key.public_key()]))


def test_signature_by_another_key_claiming_the_trusted_id(
    private_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey
) -> None:
    forged = sign(PAYLOAD, other_key).model_copy(
        update={"key_id": key_id(private_key.public_key())}
    )
    with pytest.raises(SignatureError, match="does not match"):
        verify(forged, trusted_keyring([private_key.public_key()]))


def test_unknown_key(private_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey) -> None:
    blob = sign(PAYLOAD, other_key)
    with pytest.raises(UnknownKeyError, match=blob.key_id) as info:
        verify(blob, trusted_keyring([private_key.public_key()]))
    assert isinstance(info.value, SignatureError)
    assert info.value.code == "unknown_key"


def test_empty_keyring(private_key: Ed25519PrivateKey) -> None:
    with pytest.raises(UnknownKeyError):
        verify(sign(PAYLOAD, private_key), {})


@pytest.mark.parametrize("field", ["payload", "signature"])
@pytest.mark.parametrize("junk", ["not base64!", "abc", "\u00e9t\u00e9", "QUJD\nREVG"])
def test_bad_base64(private_key: Ed25519PrivateKey, field: str, junk: str) -> None:
    blob = sign(PAYLOAD, private_key).model_copy(update={field: junk})
    with pytest.raises(SignatureError, match=field):
        verify(blob, trusted_keyring([private_key.public_key()]))


def test_truncated_signature(private_key: Ed25519PrivateKey) -> None:
    blob = sign(PAYLOAD, private_key)
    short = base64.b64encode(base64.b64decode(blob.signature)[:32]).decode()
    with pytest.raises(SignatureError):
        verify(
            blob.model_copy(update={"signature": short}),
            trusted_keyring([private_key.public_key()]),
        )


def test_load_public_key_from_raw_base64(private_key: Ed25519PrivateKey) -> None:
    text = public_key_to_text(private_key.public_key())
    assert len(base64.b64decode(text)) == 32
    loaded = load_public_key(f"  {text}\n")
    assert key_id(loaded) == key_id(private_key.public_key())


def test_load_public_key_from_pem_text(private_key: Ed25519PrivateKey) -> None:
    loaded = load_public_key(_pem(private_key))
    assert key_id(loaded) == key_id(private_key.public_key())


def test_load_public_key_from_pem_file(private_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "controller.pub.pem"
    path.write_text(_pem(private_key))
    loaded = load_public_key(str(path))
    assert key_id(loaded) == key_id(private_key.public_key())


def test_loaded_key_verifies(private_key: Ed25519PrivateKey) -> None:
    keyring = trusted_keyring([load_public_key(public_key_to_text(private_key.public_key()))])
    assert verify(sign(PAYLOAD, private_key), keyring) == PAYLOAD


@pytest.mark.parametrize(
    "text",
    [
        "",
        "junk",
        base64.b64encode(b"x" * 31).decode(),  # base64, but not 32 bytes
        base64.b64encode(b"x" * 33).decode(),
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
        "/nonexistent/controller.pub.pem",
    ],
)
def test_load_public_key_rejects_junk(text: str) -> None:
    with pytest.raises(ConfigError):
        load_public_key(text)


def test_load_public_key_rejects_junk_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    path.write_text("not a key at all")
    with pytest.raises(ConfigError):
        load_public_key(str(path))


def test_load_public_key_rejects_a_non_ed25519_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ConfigError, match="Ed25519"):
        load_public_key(pem)


def test_private_key_pem_round_trip(private_key: Ed25519PrivateKey) -> None:
    pem = private_key_to_pem(private_key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_private_key(pem)
    assert key_id(loaded.public_key()) == key_id(private_key.public_key())
    # Signatures by the reloaded key verify against the original public key.
    assert verify(sign(PAYLOAD, loaded), trusted_keyring([private_key.public_key()])) == PAYLOAD


@pytest.mark.parametrize(
    "pem", [b"", b"junk", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_load_private_key_rejects_junk(pem: bytes) -> None:
    with pytest.raises(ConfigError):
        load_private_key(pem)


def test_key_id_is_stable(private_key: Ed25519PrivateKey) -> None:
    kid = key_id(private_key.public_key())
    assert re.fullmatch(r"[0-9a-f]{16}", kid)
    assert key_id(private_key.public_key()) == kid
    assert key_id(load_private_key(private_key_to_pem(private_key)).public_key()) == kid
    assert key_id(load_public_key(public_key_to_text(private_key.public_key()))) == kid


def test_key_id_is_a_known_value() -> None:
    # RFC 8032 test vector 1; pins the key id scheme (sha256 of raw key bytes, 16 hex digits).
    raw = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    key = load_public_key(base64.b64encode(raw).decode())
    assert key_id(key) == hashlib.sha256(raw).hexdigest()[:16]


def test_key_ids_differ_between_keys() -> None:
    ids = {key_id(generate_private_key().public_key()) for _ in range(8)}
    assert len(ids) == 8
