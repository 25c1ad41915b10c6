"""The registry: engines and sessions, schema migrations, the tables, the shapes the
service layer hands out, and the content-addressed artifact store the rows point at."""

from ._artifacts import ArtifactStore, StoredArtifact
from ._engine import create_engine, describe_url, session_scope
from ._migrations import LATEST as SCHEMA_VERSION
from ._migrations import MIGRATIONS, Migration, current_version, upgrade
from ._shapes import (
    DeploymentPublic,
    DeviceCreate,
    DevicePublic,
    DeviceStatus,
    EventPublic,
    ModelVersionPublic,
    VariantPublic,
)
from ._tables import (
    FINISHED_STATES,
    Artifact,
    ArtifactGrant,
    Deployment,
    DeploymentState,
    Device,
    DeviceTrustUpdate,
    Event,
    KeyState,
    Model,
    ModelVersion,
    Profile,
    SigningKey,
    Telemetry,
    TrustUpdateState,
    Variant,
    as_utc,
    utcnow,
)

__all__ = [
    "FINISHED_STATES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Artifact",
    "ArtifactGrant",
    "ArtifactStore",
    "Deployment",
    "DeploymentPublic",
    "DeploymentState",
    "Device",
    "DeviceCreate",
    "DevicePublic",
    "DeviceStatus",
    "DeviceTrustUpdate",
    "Event",
    "EventPublic",
    "KeyState",
    "Migration",
    "Model",
    "ModelVersion",
    "ModelVersionPublic",
    "Profile",
    "SigningKey",
    "StoredArtifact",
    "Telemetry",
    "TrustUpdateState",
    "Variant",
    "VariantPublic",
    "as_utc",
    "create_engine",
    "current_version",
    "describe_url",
    "session_scope",
    "upgrade",
    "utcnow",
]
