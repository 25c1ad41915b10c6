"""Signing keys and their rotation: the registry's keys (current, next, retired), the trust
updates that introduce and revoke them on every device, and sending those updates."""

from ._rotation import (
    DeviceTrust,
    KeyPublic,
    Rotation,
    finish_rotation,
    list_keys,
    rotate_keys,
    trust_status,
)
from ._updates import (
    TRUST_TTL,
    TrustSent,
    record_trust_updates,
    resend_trust_updates,
    send_trust_updates,
    trust_payload,
)

__all__ = [
    "TRUST_TTL",
    "DeviceTrust",
    "KeyPublic",
    "Rotation",
    "TrustSent",
    "finish_rotation",
    "list_keys",
    "record_trust_updates",
    "resend_trust_updates",
    "rotate_keys",
    "send_trust_updates",
    "trust_payload",
    "trust_status",
]
