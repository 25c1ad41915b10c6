"""edgefleet's controller: the operator's registry, artifact store and command line.

Everything the CLI does is available here as a function taking an opened
:class:`Home` (see :func:`open_home`). The parts, each a sub-package: ``registry``
(engines, migrations, tables, shapes, the artifact store), ``home`` (settings, profiles,
the signing key), ``fleet`` (devices, broker files, status and events), ``catalog``
(model versions and their variants), ``rollout`` (targets, signed orders, dispatch),
``keys`` (signing keys and their rotation on every device), ``daemon`` (``edgefleet
serve``), ``mqtt`` (the one MQTT adapter), ``cli`` and ``compress`` (the registry-free
compression library).
"""

from __future__ import annotations

import importlib
import typing

if typing.TYPE_CHECKING:  # the names as type checkers see them; at run time, __getattr__
    from .catalog import (
        CompressionResult,
        add_model,
        compress_model_version,
        get_model_version,
        list_models,
        load_torch_model,
        parse_model_ref,
    )
    from .fleet import (
        BulkEnrolment,
        EnrolledDevice,
        NewDevice,
        add_device,
        add_devices,
        enrol_from_csv,
        fleet_status,
        follow_events,
        get_device,
        list_devices,
        list_events,
        parse_labels,
        remove_device,
    )
    from .home import (
        DeviceProfile,
        Home,
        InitReport,
        Settings,
        available_profiles,
        init_home,
        load_profiles,
        load_settings,
        open_home,
    )
    from .keys import finish_rotation, list_keys, rotate_keys, trust_status
    from .registry import (
        FINISHED_STATES,
        SCHEMA_VERSION,
        Artifact,
        ArtifactStore,
        Deployment,
        DeploymentPublic,
        DeploymentState,
        Device,
        DeviceCreate,
        DevicePublic,
        DeviceStatus,
        Event,
        EventPublic,
        Model,
        ModelVersion,
        ModelVersionPublic,
        Profile,
        StoredArtifact,
        Telemetry,
        Variant,
        VariantPublic,
        create_engine,
        current_version,
        session_scope,
        upgrade,
    )
    from .rollout import deploy, deployment_progress, wait_for_deployment

__version__ = "0.1.0"

# Each name is imported from its sub-package on first use (PEP 562), so `import
# edgefleet.controller.cli` costs only what the command run needs: `edgefleet --help` loads
# neither the compression library nor numpy, and ``from edgefleet.controller import Home``
# loads ``home`` and what it needs.
_SOURCES: dict[str, tuple[str, ...]] = {
    "catalog": (
        "CompressionResult",
        "add_model",
        "compress_model_version",
        "get_model_version",
        "list_models",
        "load_torch_model",
        "parse_model_ref",
    ),
    "fleet": (
        "BulkEnrolment",
        "EnrolledDevice",
        "NewDevice",
        "add_device",
        "add_devices",
        "enrol_from_csv",
        "fleet_status",
        "follow_events",
        "get_device",
        "list_devices",
        "list_events",
        "parse_labels",
        "remove_device",
    ),
    "home": (
        "DeviceProfile",
        "Home",
        "InitReport",
        "Settings",
        "available_profiles",
        "init_home",
        "load_profiles",
        "load_settings",
        "open_home",
    ),
    "keys": (
        "finish_rotation",
        "list_keys",
        "rotate_keys",
        "trust_status",
    ),
    "registry": (
        "FINISHED_STATES",
        "SCHEMA_VERSION",
        "Artifact",
        "ArtifactStore",
        "Deployment",
        "DeploymentPublic",
        "DeploymentState",
        "Device",
        "DeviceCreate",
        "DevicePublic",
        "DeviceStatus",
        "Event",
        "EventPublic",
        "Model",
        "ModelVersion",
        "ModelVersionPublic",
        "Profile",
        "StoredArtifact",
        "Telemetry",
        "Variant",
        "VariantPublic",
        "create_engine",
        "current_version",
        "session_scope",
        "upgrade",
    ),
    "rollout": (
        "deploy",
        "deployment_progress",
        "wait_for_deployment",
    ),
}
_WHERE = {name: package for package, names in _SOURCES.items() for name in names}
_PACKAGES = {*_SOURCES, "cli", "compress", "daemon", "mqtt"}


# hidden from type checkers, which would otherwise accept any name as this __getattr__'s
if not typing.TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        if name in _PACKAGES:  # `edgefleet.controller.fleet` without importing it first
            return importlib.import_module(f".{name}", __name__)
        package = _WHERE.get(name)
        if package is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{package}", __name__), name)
        globals()[name] = value  # once found, an ordinary attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})


__all__ = [
    "FINISHED_STATES",
    "SCHEMA_VERSION",
    "Artifact",
    "ArtifactStore",
    "BulkEnrolment",
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
    "NewDevice",
    "Profile",
    "Settings",
    "StoredArtifact",
    "Telemetry",
    "Variant",
    "VariantPublic",
    "add_device",
    "add_devices",
    "add_model",
    "available_profiles",
    "compress_model_version",
    "create_engine",
    "current_version",
    "deploy",
    "deployment_progress",
    "enrol_from_csv",
    "finish_rotation",
    "fleet_status",
    "follow_events",
    "get_device",
    "get_model_version",
    "init_home",
    "list_devices",
    "list_events",
    "list_keys",
    "list_models",
    "load_profiles",
    "load_settings",
    "load_torch_model",
    "open_home",
    "parse_labels",
    "parse_model_ref",
    "remove_device",
    "rotate_keys",
    "session_scope",
    "trust_status",
    "upgrade",
    "wait_for_deployment",
]
