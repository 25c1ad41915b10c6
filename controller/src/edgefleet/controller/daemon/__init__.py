"""``edgefleet serve``: the daemon's loop (jobs on one clock), MQTT ingest into the registry,
the HTTP server for artifacts, ``/metrics``, ``/healthz`` and ``/readyz`` (what the daemon
knows of its broker, registry and jobs), the fleet page and its API, and the metrics it
counts."""

from ._access import Access, registry_token_check
from ._health import LATE_AFTER_TURNS, MIN_LATE_S, REGISTRY_CHECK, Health, Verdict
from ._http import ArtifactServer
from ._inbox import DeadLetter, DeviceRates, Inbox, RateLimit
from ._ingest import Inbound, ingest, ingest_many
from ._loop import CLIENT_ID, Daemon, Job, run_jobs, serve
from ._metrics import Metrics
from ._web import FleetWeb, WebAnswer, web_networks
from ._wire import server_tls_context

__all__ = [
    "CLIENT_ID",
    "LATE_AFTER_TURNS",
    "MIN_LATE_S",
    "REGISTRY_CHECK",
    "Access",
    "ArtifactServer",
    "Daemon",
    "DeadLetter",
    "DeviceRates",
    "FleetWeb",
    "Health",
    "Inbound",
    "Inbox",
    "Job",
    "Metrics",
    "RateLimit",
    "Verdict",
    "WebAnswer",
    "ingest",
    "ingest_many",
    "registry_token_check",
    "run_jobs",
    "serve",
    "server_tls_context",
    "web_networks",
]
