"""``edgefleet serve``: the daemon's loop (jobs on one clock), MQTT ingest into the registry,
the HTTP server for artifacts, ``/metrics`` and ``/healthz``, and the metrics it counts."""

from ._access import Access, registry_token_check
from ._http import ArtifactServer, server_tls_context
from ._inbox import DeadLetter, DeviceRates, Inbox, RateLimit
from ._ingest import Inbound, ingest, ingest_many
from ._loop import CLIENT_ID, Daemon, Job, run_jobs, serve
from ._metrics import Metrics

__all__ = [
    "CLIENT_ID",
    "Access",
    "ArtifactServer",
    "Daemon",
    "DeadLetter",
    "DeviceRates",
    "Inbound",
    "Inbox",
    "Job",
    "Metrics",
    "RateLimit",
    "ingest",
    "ingest_many",
    "registry_token_check",
    "run_jobs",
    "serve",
    "server_tls_context",
]
