"""The signing keys' private files: ``keys/<key id>.key``, mode 0600, written once; and
``keys/controller.key`` / ``controller.pub``, the current key of the home as `init` made it
or as the last finished rotation left it."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.shared import key_id, load_private_key, private_key_to_pem, public_key_to_text
from edgefleet.shared.errors import ConfigError

from ._files import write_private
from ._settings import Settings


def key_path(settings: Settings, kid: str) -> Path:
    return settings.private_key_path.parent / f"{kid}.key"


def write_new_key(path: Path, key: Ed25519PrivateKey) -> None:
    """O_EXCL + mode: the key is never on disk with wider permissions, not even briefly, and
    an existing key is never replaced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_key_to_pem(key))
        fh.flush()
        os.fsync(fh.fileno())


def read_key(path: Path, expected_id: str | None = None) -> Ed25519PrivateKey:
    try:
        key = load_private_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {path}: {exc.strerror}") from exc
    if expected_id is not None and key_id(key.public_key()) != expected_id:
        raise ConfigError(f"{path} does not hold key {expected_id}")
    return key


def make_home_key_current(settings: Settings, key: Ed25519PrivateKey) -> None:
    """Point controller.key and controller.pub at ``key`` (after a rotation finished)."""
    write_private(settings.private_key_path, private_key_to_pem(key).decode())
    write_private(settings.public_key_path, public_key_to_text(key.public_key()) + "\n", mode=0o644)
