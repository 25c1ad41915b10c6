"""Ed25519 signing of the exact bytes sent, and verification against pinned keys.

A signed document travels as a :class:`SignedBlob`: the payload bytes
(base64), the signature over exactly those bytes and the id of the key. The
receiver verifies the decoded bytes before it parses them, and never
re-serialises anything before verifying.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict

from .errors import ConfigError, KeyRevoked, SignatureError, UnknownKeyError

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class SignedBlob(BaseModel):
    """Payload bytes plus an Ed25519 signature over exactly those bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str
    payload: str  # base64 of the signed bytes
    signature: str  # base64 of the 64-byte signature

    def payload_bytes(self) -> bytes:
        return _b64decode(self.payload, "payload")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise SignatureError(f"{what} is not valid base64") from exc


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: sha256 of its raw bytes, 16 hex digits."""
    return hashlib.sha256(public_key.public_bytes(*_RAW)).hexdigest()[:16]


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("not a PEM-encoded private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("the private key is not an Ed25519 key")
    return key


def public_key_to_text(key: Ed25519PublicKey) -> str:
    """Base64 of the raw 32 key bytes: short enough for a TOML file."""
    return base64.b64encode(key.public_bytes(*_RAW)).decode("ascii")


def raw_public_key(text: str) -> Ed25519PublicKey:
    """Read a public key given only as base64 of its 32 raw bytes (what a trust update holds)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ConfigError("a key must be base64 of 32 raw bytes") from exc
    if len(raw) != 32:
        raise ConfigError("a key must be base64 of 32 raw bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public_key(text: str) -> Ed25519PublicKey:
    """Read a public key given as raw base64, as PEM text, or as a path to a PEM file."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise ConfigError("not a PEM-encoded public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError("the public key is not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) == 32:
        return Ed25519PublicKey.from_public_bytes(raw)
    path = Path(text).expanduser()
    if path.is_file():
        return load_public_key(path.read_text())
    raise ConfigError("a trusted key must be base64 of 32 raw bytes, PEM text or a PEM file path")


def trusted_keyring(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    return {key_id(k): k for k in keys}


def sign(payload: bytes, private_key: Ed25519PrivateKey) -> SignedBlob:
    return SignedBlob(
        key_id=key_id(private_key.public_key()),
        payload=base64.b64encode(payload).decode("ascii"),
        signature=base64.b64encode(private_key.sign(payload)).decode("ascii"),
    )


def verify(
    blob: SignedBlob,
    keyring: Mapping[str, Ed25519PublicKey],
    *,
    revoked: Collection[str] = (),
) -> bytes:
    """Return the payload bytes if a pinned key signed them; raise otherwise.

    A key id in ``revoked`` is refused with :class:`KeyRevoked` whatever the keyring
    holds, so a revoked key that is still written in a config file never comes back."""
    if blob.key_id in revoked:
        raise KeyRevoked(f"signed with key {blob.key_id!r}, which a trust update revoked")
    public_key = keyring.get(blob.key_id)
    if public_key is None:
        raise UnknownKeyError(f"signed with key {blob.key_id!r}, which this device does not trust")
    payload = blob.payload_bytes()
    signature = _b64decode(blob.signature, "signature")
    try:
        public_key.verify(signature, payload)
    except InvalidSignature as exc:
        raise SignatureError(f"signature does not match (key {blob.key_id})") from exc
    return payload
