"""edgefleet's controller: the operator's registry, artifact store and command line.

Everything the CLI does is available here as a function taking an opened
:class:`Home` (see :func:`open_home`).
"""

from ._catalog import add_model, get_model_version, list_models, parse_model_ref
from ._compression import CompressionResult, compress_model_version, load_torch_model
from ._db import create_engine, session_scope
from ._deployments import (
    DeploymentPublic,
    DeviceStatus,
    EventPublic,
    deploy,
    deployment_progress,
    fleet_status,
    list_events,
)
from ._devices import (
    EnrolledDevice,
    add_device,
    get_device,
    list_devices,
    parse_labels,
    remove_device,
)
from ._home import Home, InitReport, available_profiles, init_home, open_home
from ._migrations import LATEST as SCHEMA_VERSION
from ._migrations import current_version, upgrade
from ._models import (
    Artifact,
    Deployment,
    DeploymentState,
    Device,
    DeviceCreate,
    DevicePublic,
    Event,
    Model,
    ModelVersion,
    ModelVersionPublic,
    Profile,
    Telemetry,
    Variant,
    VariantPublic,
)
from ._profiles import DeviceProfile, load_profiles
from ._settings import Settings, load_settings
from ._store import ArtifactStore, StoredArtifact

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "Artifact",
    "ArtifactStore",
    "CompressionResult",
    "Deployment",
    "DeploymentPublic",
    "DeploymentState",
    "Device",
    "DeviceCreate",
    "DeviceProfile",
    "DevicePublic",
    "DeviceStatus",
    "EnrolledDevice",
    "Event",
    "EventPublic",
    "Home",
    "InitReport",
    "Model",
    "ModelVersion",
    "ModelVersionPublic",
    "Profile",
    "Settings",
    "StoredArtifact",
    "Telemetry",
    "Variant",
    "VariantPublic",
    "add_device",
    "add_model",
    "available_profiles",
    "compress_model_version",
    "create_engine",
    "current_version",
    "deploy",
    "deployment_progress",
    "fleet_status",
    "get_device",
    "get_model_version",
    "init_home",
    "list_devices",
    "list_events",
    "list_models",
    "load_profiles",
    "load_settings",
    "load_torch_model",
    "open_home",
    "parse_labels",
    "parse_model_ref",
    "remove_device",
    "session_scope",
    "upgrade",
]
