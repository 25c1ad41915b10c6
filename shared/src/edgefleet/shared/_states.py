"""The states a device reports, in events and in its status: one vocabulary for both sides."""

from __future__ import annotations

from enum import StrEnum


class DeviceState(StrEnum):
    """What an agent is doing, or where a deployment, rollback or benchmark ended.

    The values are the wire strings; the controller matches on the members.
    """

    # the deployment lifecycle
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    LOADING = "loading"
    TESTING = "testing"
    SWITCHING = "switching"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    # a command refused before any work (bad message, signature, device, sequence...)
    REJECTED = "rejected"
    # an on-device benchmark of a candidate that is never served
    BENCHMARKING = "benchmarking"
    BENCHMARKED = "benchmarked"
    BENCHMARK_FAILED = "benchmark_failed"
    # a signed trust update (the keys the device trusts) applied; refused ones are REJECTED
    TRUST_UPDATED = "trust_updated"
