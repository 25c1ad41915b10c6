"""Who may read which artifact: a device's bearer token reads the artifacts addressed to
that device (its deployments, and benchmark candidates while their grant lasts), nothing
else. The HTTP server answers anything else exactly like a missing file."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import datetime
from enum import Enum

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from ..fleet import token_sha256
from ..registry import (
    ArtifactGrant,
    Deployment,
    Device,
    Variant,
    as_utc,
    session_scope,
    utcnow,
)


class Access(Enum):
    """What a bearer token may do with one artifact."""

    UNKNOWN_TOKEN = "unknown_token"  # no device's token: 401
    HIDDEN = "hidden"  # a device's, but not its artifact: 404, as if it did not exist
    GRANTED = "granted"


AccessCheck = Callable[[str, str], Access]  # (bearer token, artifact sha256) -> access


def registry_token_check(engine: Engine, *, clock: Callable[[], datetime] = utcnow) -> AccessCheck:
    """Decide from the registry: a device reads the artifact of any of its deployment rows
    (finished ones too: it may be told to roll back to one) and a benchmark candidate while
    the grant recorded with the order lasts; nothing else."""

    def check(token: str, sha256: str) -> Access:
        digest = token_sha256(token)
        with session_scope(engine) as session:
            device = session.exec(select(Device).where(Device.token_sha256 == digest)).first()
            # the lookup is by hash; compare again in constant time for good measure
            if device is None or not hmac.compare_digest(device.token_sha256, digest):
                return Access.UNKNOWN_TOKEN
            deployed = session.exec(
                select(Deployment.id)
                .join(Variant, col(Variant.id) == col(Deployment.variant_id))
                .where(Deployment.device_id == device.id, Variant.artifact_sha256 == sha256)
                .limit(1)
            ).first()
            if deployed is not None:
                return Access.GRANTED
            expiries = session.exec(
                select(ArtifactGrant.expires_at).where(
                    ArtifactGrant.device_id == device.id,
                    ArtifactGrant.artifact_sha256 == sha256,
                )
            ).all()
        now = clock()
        if any((as_utc(expires) or now) > now for expires in expiries):
            return Access.GRANTED
        return Access.HIDDEN

    return check
