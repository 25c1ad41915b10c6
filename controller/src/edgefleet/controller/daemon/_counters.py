"""The daemon's own counters, declared in one place."""

from __future__ import annotations

# The daemon's own counters: name -> (help, label names). ``inc`` takes only these.
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "edgefleet_messages_ingested_total": (
        "Messages from devices written to the registry, by kind.",
        ("kind",),
    ),
    "edgefleet_messages_dead_lettered_total": (
        "Messages from devices acknowledged without being stored, by reason: invalid, "
        "rate_limited (over the device's share) or unstorable (refused by the registry).",
        ("reason",),
    ),
    "edgefleet_deployments_dispatched_total": (
        "Signed manifests and rollback orders published to devices.",
        (),
    ),
    "edgefleet_rollout_transitions_total": (
        "Rollout state changes made by the daemon, by the state entered.",
        ("state",),
    ),
    "edgefleet_deployments_resent_total": (
        "Stored manifests published again on connecting, not yet confirmed by their device.",
        (),
    ),
    "edgefleet_reconcile_pings_total": (
        "Devices asked for their status about an order that had no news (reconciliation).",
        (),
    ),
    "edgefleet_reconcile_resends_total": (
        "Orders sent again, re-signed, because their device showed it never received them.",
        (),
    ),
    "edgefleet_trust_updates_sent_total": ("Signed trust updates published to devices.", ()),
    "edgefleet_trust_updates_resent_total": (
        "Stored trust updates published again on connecting, not yet confirmed.",
        (),
    ),
    "edgefleet_artifact_requests_total": (
        "Artifact server responses, by HTTP status.",
        ("status",),
    ),
    "edgefleet_api_requests_total": (
        "Fleet page and API responses, by route and HTTP status.",
        ("route", "status"),
    ),
}
