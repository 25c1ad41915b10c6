"""The fleet: enrolling devices, one at a time or a CSV file's worth (credentials and agent
configs), the broker's password file and ACL, and the read side — what runs where, how fast,
what the devices reported, and whether an `edgefleet serve` is alive (its heartbeat); and how
long telemetry is kept."""

from ._broker_files import BrokerConfig, cli_broker_user, write_broker_config
from ._daemon import DaemonLiveness, DaemonState, daemon_state, record_heartbeat
from ._deployment_views import DeploymentView, DeviceProgress, Wave, deployment_views
from ._devices import (
    DEFAULT_STATE_DIR,
    EnrolledDevice,
    add_device,
    agent_config_text,
    get_device,
    list_devices,
    mosquitto_password_hash,
    parse_labels,
    remove_device,
    token_sha256,
)
from ._enrol import BulkEnrolment, NewDevice, add_devices, enrol_from_csv, read_devices_csv
from ._overview import (
    DeviceRow,
    FleetOverview,
    FleetSummary,
    LatencyChart,
    LatencyHistory,
    LatencySeries,
    fleet_overview,
    latency_chart,
)
from ._retention import PruneReport, TelemetryRetention, prune_telemetry
from ._status import fleet_status, follow_events, list_events

__all__ = [
    "DEFAULT_STATE_DIR",
    "BrokerConfig",
    "BulkEnrolment",
    "DaemonLiveness",
    "DaemonState",
    "DeploymentView",
    "DeviceProgress",
    "DeviceRow",
    "EnrolledDevice",
    "FleetOverview",
    "FleetSummary",
    "LatencyChart",
    "LatencyHistory",
    "LatencySeries",
    "NewDevice",
    "PruneReport",
    "TelemetryRetention",
    "Wave",
    "add_device",
    "add_devices",
    "agent_config_text",
    "cli_broker_user",
    "daemon_state",
    "deployment_views",
    "enrol_from_csv",
    "fleet_overview",
    "fleet_status",
    "follow_events",
    "get_device",
    "latency_chart",
    "list_devices",
    "list_events",
    "mosquitto_password_hash",
    "parse_labels",
    "prune_telemetry",
    "read_devices_csv",
    "record_heartbeat",
    "remove_device",
    "token_sha256",
    "write_broker_config",
]
