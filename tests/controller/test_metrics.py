"""``/metrics`` on prometheus_client, from a real registry: the families, their labels, and
the bounds on cardinality (labels come from the registry, never from what devices send)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.controller import Home
from edgefleet.controller import deploy as record_deployment
from edgefleet.controller.catalog import add_model
from edgefleet.controller.daemon import DeadLetter, Metrics, ingest_many
from edgefleet.controller.fleet import add_device
from edgefleet.controller.registry import DeviceCreate
from edgefleet.shared import (
    N_BUCKETS,
    LatencyHistogram,
    ModelRef,
    ModelStats,
    StatusMessage,
    SystemStats,
    TelemetryMessage,
)


@pytest.fixture
def fleet(home: Home, model_file: Path) -> list[str]:
    names = ["pi-1", "pi-2", "box-1"]
    for name in names:
        profile = "x86-edge" if name.startswith("box") else "rpi4"
        enrolled = add_device(home, DeviceCreate(name=name, profile=profile))
        assert tomllib.loads(enrolled.agent_config)["artifact_token"]
    add_model(home, model_file, name="digits", version="1.0.0")
    return names


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _telemetry(device: str, model: str, latencies_ms: list[float], errors: int = 0) -> object:
    hist = LatencyHistogram()
    for ms in latencies_ms:
        hist.record(ms)
    name, _, version = model.partition(":")
    return TelemetryMessage(
        device_id=device,
        interval_s=1.0,
        models=[
            ModelStats(
                model=ModelRef(name=name, version=version),
                deployment_id="dep-1",
                requests=len(latencies_ms),
                errors=errors,
                latency_counts=hist.counts,
            )
        ],
        system=SystemStats(
            cpu_percent=12.5, memory_used_bytes=1000, temperature_c=48.0, disk_free_bytes=5000
        ),
    )


def _ingest(home: Home, *batch: tuple[str, object]) -> None:
    with home.session(write=True) as s:
        ingest_many(s, list(batch))  # type: ignore[arg-type]


def test_counters_start_at_zero_and_count(home: Home) -> None:
    metrics = Metrics(broker_connected=lambda: True)
    metrics.inc("edgefleet_messages_ingested_total", 2, kind="status")
    metrics.inc("edgefleet_deployments_dispatched_total")
    got = _samples(metrics.render())
    assert got[("edgefleet_messages_ingested_total", (("kind", "status"),))] == 2
    assert got[("edgefleet_deployments_dispatched_total", ())] == 1
    assert got[("edgefleet_deployments_resent_total", ())] == 0
    for reason in DeadLetter:  # every reason shows, at 0, before the first dead letter
        assert got[("edgefleet_messages_dead_lettered_total", (("reason", reason.value),))] == 0
    assert got[("edgefleet_broker_connected", ())] == 1
    assert [k for k in got if k[0] == "edgefleet_build_info"]
    assert metrics.value("edgefleet_messages_ingested_total", kind="status") == 2
    with pytest.raises(KeyError):
        metrics.inc("edgefleet_not_a_counter_total")


def test_fleet_families_from_the_registry(home: Home, fleet: list[str]) -> None:
    metrics = Metrics()
    with home.session(write=True) as s:
        ingest_many(s, [(n, StatusMessage(device_id=n, online=True)) for n in ("pi-1", "box-1")])
    record_deployment(home, "digits:1.0.0", profile="rpi4")
    record_deployment(home, "digits:1.0.0", devices=["pi-1"])  # pi-1's latest row is this one
    first = _samples(metrics.render(home.engine))  # the first scrape: counters start here
    assert first[("edgefleet_devices", (("online", "true"),))] == 2
    assert first[("edgefleet_profile_devices", (("online", "false"), ("profile", "rpi4")))] == 1
    assert first[("edgefleet_device_up", (("device", "pi-1"),))] == 1
    assert first[("edgefleet_device_up", (("device", "pi-2"),))] == 0
    assert ("edgefleet_device_last_seen_timestamp_seconds", (("device", "pi-1"),)) in first
    # the current state: one row per device, not the history (pi-1 has two rows)
    assert first[("edgefleet_device_deployments", (("state", "pending"),))] == 2
    assert first[("edgefleet_deployments", (("state", "active"),))] == 2

    _ingest(
        home,
        ("pi-1", _telemetry("pi-1", "digits:1.0.0", [1.0, 2.0, 3.0], errors=1)),
        ("pi-2", _telemetry("pi-2", "digits:1.0.0", [100.0])),
        ("box-1", _telemetry("box-1", "digits:1.0.0", [0.5])),
        ("box-1", _telemetry("box-1", "made-up-model:9", [0.5])),  # no such version
    )
    got = _samples(metrics.render(home.engine))
    rpi4 = (("model", "digits"), ("profile", "rpi4"), ("version", "1.0.0"))
    assert got[("edgefleet_inference_requests_total", rpi4)] == 4
    assert got[("edgefleet_inference_errors_total", rpi4)] == 1
    assert got[("edgefleet_inference_latency_seconds_count", rpi4)] == 4
    # merged buckets: three requests at or under 5 ms, the fourth far above
    le_5ms = next(
        v
        for (name, labels), v in got.items()
        if name == "edgefleet_inference_latency_seconds_bucket"
        and dict(labels).get("profile") == "rpi4"
        and 0.004 < float(dict(labels)["le"]) <= 0.005
    )
    assert le_5ms == 3
    assert got[("edgefleet_device_cpu_percent", (("device", "pi-1"),))] == 12.5
    assert got[("edgefleet_device_temperature_celsius", (("device", "box-1"),))] == 48.0
    # a model string no registered version has is counted, never made a label
    assert got[("edgefleet_telemetry_unknown_model_total", ())] == 1
    assert not [k for k in got if dict(k[1]).get("model") == "made-up-model"]

    # counters only grow: the same rows are not counted twice by the next scrape
    again = _samples(metrics.render(home.engine))
    assert again[("edgefleet_inference_requests_total", rpi4)] == 4


def test_per_device_series_stop_past_the_bound(home: Home, fleet: list[str]) -> None:
    metrics = Metrics(max_device_series=2)
    got = _samples(metrics.render(home.engine))
    assert not [k for k in got if k[0] == "edgefleet_device_up"]
    assert got[("edgefleet_devices", (("online", "false"),))] == 3


def test_every_latency_bucket_is_exported(home: Home, fleet: list[str]) -> None:
    metrics = Metrics()
    metrics.render(home.engine)
    _ingest(home, ("pi-1", _telemetry("pi-1", "digits:1.0.0", [1.0])))
    got = _samples(metrics.render(home.engine))
    buckets = [k for k in got if k[0] == "edgefleet_inference_latency_seconds_bucket"]
    assert len(buckets) == N_BUCKETS
