"""The daemon's parts without a broker: dispatch (signing, sequences), ingest, artifact server."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from edgefleet import shared
from edgefleet.controller import (
    Artifact,
    Deployment,
    Device,
    Event,
    Home,
    Telemetry,
    fleet_status,
    remove_device,
)
from edgefleet.controller import deploy as record_deployment
from edgefleet.controller.catalog import add_model
from edgefleet.controller.daemon import ArtifactServer, Metrics, ingest_many, registry_token_check
from edgefleet.controller.fleet import add_device
from edgefleet.controller.registry import DeviceCreate, as_utc
from edgefleet.controller.rollout import dispatch_pending, resend_unconfirmed
from edgefleet.shared import (
    N_BUCKETS,
    LatencyHistogram,
    ModelRef,
    ModelStats,
    StatusMessage,
    TelemetryMessage,
)
from edgefleet.shared.errors import BrokerError


@pytest.fixture
def fleet(home: Home, model_file: Path, tmp_path: Path) -> dict[str, str]:
    tokens = {}
    for name, profile in (("pi-1", "rpi4"), ("box-1", "x86-edge")):
        enrolled = add_device(home, DeviceCreate(name=name, profile=profile))
        tokens[name] = tomllib.loads(enrolled.agent_config)["artifact_token"]
    add_model(home, model_file, name="digits", version="1.0.0")
    return tokens


def _hello(home: Home, *names: str) -> None:
    """The devices' birth messages, as the daemon would write them."""
    with home.session() as s:
        ingest_many(s, [(n, StatusMessage(device_id=n, online=True)) for n in names])


def _rows(home: Home) -> list[tuple[str, str, int | None]]:
    with home.session() as s:
        rows = s.exec(
            select(Device.name, Deployment.state, Deployment.sequence).join(
                Device, Device.id == Deployment.device_id
            )
        ).all()
        return sorted(rows, key=repr)


def test_dispatch_signs_one_manifest_per_device_with_rising_sequences(
    home: Home, fleet: dict[str, str]
) -> None:
    sent: list[tuple[str, bytes]] = []
    _hello(home, "pi-1", "box-1")
    record_deployment(home, "digits:1.0.0", profile="rpi4")
    first = dispatch_pending(home, lambda t, p: sent.append((t, p)))
    assert [(d.device, d.sequence) for d in first] == [("pi-1", 1)]
    assert _rows(home) == [("pi-1", "sent", 1)]
    assert dispatch_pending(home, lambda t, p: sent.append((t, p))) == []  # sent only once

    topic, payload = sent[0]
    assert topic == shared.command_topic("pi-1")
    command = shared.decode(payload)
    keyring = shared.trusted_keyring([home.signing_key().public_key()])
    manifest = shared.parse_signed_document(shared.verify(command.signed, keyring))
    assert manifest.device_id == "pi-1"
    assert manifest.sequence == 1
    assert manifest.model == ModelRef(name="digits", version="1.0.0", variant="fp32")
    assert (
        manifest.artifact.url == f"sha256/{manifest.artifact.sha256[:2]}/{manifest.artifact.sha256}"
    )
    assert manifest.artifact.sha256 in home.store
    assert manifest.runtime == home.profile("rpi4").runtime
    assert manifest.io.inputs[0].name == "input"
    hours = (manifest.expires_at - manifest.issued_at).total_seconds() / 3600
    assert hours == pytest.approx(24)

    record_deployment(home, "digits:1.0.0", devices=["pi-1", "box-1"])
    second = dispatch_pending(home, lambda t, p: sent.append((t, p)))
    assert sorted((d.device, d.sequence) for d in second) == [("box-1", 1), ("pi-1", 2)]


def test_a_device_reporting_a_higher_sequence_raises_the_next_one(
    home: Home, fleet: dict[str, str]
) -> None:
    with home.session() as s:
        ingest_many(s, [("pi-1", StatusMessage(device_id="pi-1", online=True, last_sequence=7))])
    record_deployment(home, "digits:1.0.0", devices=["pi-1"])
    (sent,) = dispatch_pending(home, lambda t, p: None)
    assert sent.sequence == 8


def test_a_device_never_heard_from_waits_until_it_connects(
    home: Home, fleet: dict[str, str]
) -> None:
    record_deployment(home, "digits:1.0.0", devices=["pi-1", "box-1"])
    assert dispatch_pending(home, lambda t, p: None) == []
    _hello(home, "box-1")
    assert [d.device for d in dispatch_pending(home, lambda t, p: None)] == ["box-1"]
    with home.session() as s:  # offline now, but its session at the broker keeps commands
        ingest_many(s, [("pi-1", StatusMessage(device_id="pi-1", online=True))])
        ingest_many(s, [("pi-1", StatusMessage(device_id="pi-1", online=False))])
    assert [d.device for d in dispatch_pending(home, lambda t, p: None)] == ["pi-1"]


def _stored_payloads(home: Home) -> dict[str, bytes | None]:
    with home.session() as s:
        rows = s.exec(
            select(Device.name, Deployment.payload).join(Device, Device.id == Deployment.device_id)
        ).all()
        return {name: payload for name, payload in rows}


def test_a_command_lost_after_its_row_was_marked_sent_is_resent_byte_for_byte(
    home: Home, fleet: dict[str, str]
) -> None:
    """The daemon dies (here: the publish raises) after committing ``sent`` for its batch,
    before the broker has the commands: the rows keep the exact bytes, and resending
    publishes them again."""
    _hello(home, "pi-1", "box-1")
    record_deployment(home, "digits:1.0.0", devices=["pi-1", "box-1"])
    attempted: list[tuple[str, bytes]] = []

    def crash(topic: str, payload: bytes) -> None:
        attempted.append((topic, payload))
        raise BrokerError("the broker never took it")

    with pytest.raises(BrokerError, match="acknowledged 0 of 2 orders"):
        dispatch_pending(home, crash)
    # the batch was prepared together; publishing stopped at the first failure
    assert _rows(home) == [("box-1", "sent", 1), ("pi-1", "sent", 1)]
    ((topic, lost),) = attempted
    stored = _stored_payloads(home)
    assert stored[shared.parse_topic(topic)[0]] == lost and None not in stored.values()

    published: list[tuple[str, bytes]] = []
    again = resend_unconfirmed(home, lambda t, p: published.append((t, p)))
    assert sorted((d.device, d.sequence) for d in again) == [("box-1", 1), ("pi-1", 1)]
    assert (topic, lost) in published and len(published) == 2
    assert _rows(home) == [("box-1", "sent", 1), ("pi-1", "sent", 1)]  # nothing moved
    # the broker has them now: its session keeps them for the devices, so no second copy
    assert set(_stored_payloads(home).values()) == {None}
    assert resend_unconfirmed(home, lambda t, p: published.append((t, p))) == []

    # the device is signed for and gets exactly what the first attempt would have sent
    keyring = shared.trusted_keyring([home.signing_key().public_key()])
    manifest = shared.parse_signed_document(shared.verify(shared.decode(lost).signed, keyring))
    assert (manifest.device_id, manifest.sequence) == (shared.parse_topic(topic)[0], 1)
    assert dispatch_pending(home, lambda t, p: published.append((t, p))) == []  # all sent


def test_a_batch_the_broker_acknowledges_in_part_keeps_the_rest_for_resending(
    home: Home, fleet: dict[str, str]
) -> None:
    _hello(home, "pi-1", "box-1")
    record_deployment(home, "digits:1.0.0", devices=["pi-1", "box-1"])
    seen: list[str] = []

    def half(messages: Sequence[tuple[str, bytes]]) -> list[bool]:
        seen.extend(shared.parse_topic(t)[0] for t, _ in messages)
        return [True, False]

    with pytest.raises(BrokerError, match="acknowledged 1 of 2 orders"):
        dispatch_pending(home, lambda t, p: None, publish_many=half)
    assert len(seen) == 2  # both published back to back
    stored = _stored_payloads(home)
    assert stored[seen[0]] is None and stored[seen[1]] is not None
    (again,) = resend_unconfirmed(home, lambda t, p: None)
    assert again.device == seen[1]


def test_unconfirmed_orders_are_sent_again_as_a_batch(home: Home, fleet: dict[str, str]) -> None:
    """Resending is a pipeline too: every unconfirmed row published back to back; the ones
    the broker acknowledged lose their bytes, the rest keep them and the call says so."""
    _hello(home, "pi-1", "box-1")
    record_deployment(home, "digits:1.0.0", devices=["pi-1", "box-1"])
    with pytest.raises(BrokerError):
        dispatch_pending(home, lambda t, p: None, publish_many=lambda m: [False] * len(m))
    calls: list[list[str]] = []

    def first_only(messages: Sequence[tuple[str, bytes]]) -> list[bool]:
        calls.append([shared.parse_topic(t)[0] for t, _ in messages])
        return [True] + [False] * (len(messages) - 1)

    with pytest.raises(BrokerError, match="acknowledged 1 of 2 orders sent again"):
        resend_unconfirmed(home, lambda t, p: None, publish_many=first_only)
    ((acked, kept),) = calls  # one call for both
    stored = _stored_payloads(home)
    assert stored[acked] is None and stored[kept] is not None
    (again,) = resend_unconfirmed(home, lambda t, p: None, publish_many=first_only)
    assert again.device == kept and calls[-1] == [kept]
    assert set(_stored_payloads(home).values()) == {None}


def test_rows_a_device_confirmed_and_expired_ones_are_not_resent(
    home: Home, fleet: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    _hello(home, "pi-1", "box-1")
    record_deployment(home, "digits:1.0.0", devices=["pi-1", "box-1"])

    def lost(topic: str, payload: bytes) -> None:
        raise BrokerError("never acknowledged")

    with pytest.raises(BrokerError):  # the batch is marked sent, then its publish fails
        dispatch_pending(home, lost)
    assert _rows(home) == [("box-1", "sent", 1), ("pi-1", "sent", 1)]
    (pi_dep,) = [d for d in _deployment_ids(home) if d[0] == "pi-1"]
    started = shared.EventMessage(device_id="pi-1", deployment_id=pi_dep[1], state="downloading")
    with home.session() as s:  # the device reports: the command reached it after all
        ingest_many(s, [("pi-1", started)])
    assert _rows(home) == [("box-1", "sent", 1), ("pi-1", "in_progress", 1)]
    assert _stored_payloads(home)["pi-1"] is None

    # past the manifest's expiry (24 h by default): the agent would refuse it, so it is not
    # sent; the row stays as it is, since the device may yet report on it
    published: list[tuple[str, bytes]] = []
    later = datetime.now(UTC) + timedelta(hours=25)
    with caplog.at_level(logging.WARNING, logger="edgefleet.controller.dispatch"):
        assert resend_unconfirmed(home, lambda t, p: published.append((t, p)), now=later) == []
    assert published == []
    assert "expired" in caplog.text and "not resent" in caplog.text
    assert _rows(home) == [("box-1", "sent", 1), ("pi-1", "in_progress", 1)]

    # before expiry only box-1, whose command the broker never acknowledged, goes again
    resent = resend_unconfirmed(home, lambda t, p: published.append((t, p)))
    assert [d.device for d in resent] == ["box-1"]
    assert [t for t, _ in published] == [shared.command_topic("box-1")]


def _deployment_ids(home: Home) -> list[tuple[str, str]]:
    with home.session() as s:
        rows = s.exec(
            select(Device.name, Deployment.deployment_id).join(
                Device, Device.id == Deployment.device_id
            )
        ).all()
        return [(n, d) for n, d in rows]


def test_ingest_batch_of_telemetry_from_many_devices(home: Home, fleet: dict[str, str]) -> None:
    """One batch mixing devices, a model-less interval, a spoofed id and an unknown device:
    each kept message becomes its rows and every device's last_seen moves."""
    stats = ModelStats(
        model=ModelRef(name="digits", version="1.0.0"),
        deployment_id="dep-a",
        requests=5,
        latency_counts=[0] * N_BUCKETS,
        p95_ms=1.5,
    )
    batch = [
        ("pi-1", TelemetryMessage(device_id="pi-1", interval_s=1.0, models=[stats, stats])),
        ("box-1", TelemetryMessage(device_id="box-1", interval_s=1.0)),  # nothing serving
        ("box-1", TelemetryMessage(device_id="pi-1", interval_s=1.0)),  # claims another id
        ("ghost", TelemetryMessage(device_id="ghost", interval_s=1.0)),
    ]
    with home.session(write=True) as s:
        assert ingest_many(s, batch) == 2
    with home.session() as s:
        rows = s.exec(
            select(Device.name, Telemetry.model, Telemetry.requests)
            .join(Device, Device.id == Telemetry.device_id)  # type: ignore[arg-type]
            .order_by(Telemetry.id)
        ).all()
        assert [tuple(r) for r in rows] == [
            ("pi-1", "digits:1.0.0/fp32", 5),
            ("pi-1", "digits:1.0.0/fp32", 5),
            ("box-1", None, 0),
        ]
        seen = s.exec(select(Device.name, Device.last_seen)).all()
        assert all(when is not None for _, when in seen)

    # QoS 1 redelivers: the same intervals again, in one batch and in the next, add nothing
    again = batch[:2]
    with home.session(write=True) as s:
        assert ingest_many(s, again + again) == 4
    with home.session(write=True) as s:
        assert ingest_many(s, again) == 2
    with home.session() as s:
        assert len(s.exec(select(Telemetry)).all()) == 3
    later = TelemetryMessage(device_id="box-1", interval_s=1.0)  # a new interval still counts
    with home.session(write=True) as s:
        ingest_many(s, [("box-1", later), ("box-1", later)])
    with home.session() as s:
        assert len(s.exec(select(Telemetry)).all()) == 4
    # a device clock in another zone: the same instant, redelivered, is still one interval
    from datetime import datetime, timedelta, timezone

    east = datetime.now(timezone(timedelta(hours=2)))
    zoned = TelemetryMessage(device_id="box-1", interval_s=1.0, sent_at=east)
    for _ in range(2):
        with home.session(write=True) as s:
            ingest_many(s, [("box-1", zoned)])
    with home.session() as s:
        assert len(s.exec(select(Telemetry)).all()) == 5


def test_ingest_writes_status_events_and_telemetry_idempotently(
    home: Home, fleet: dict[str, str]
) -> None:
    _hello(home, "pi-1")
    (row, *_) = record_deployment(home, "digits:1.0.0", devices=["pi-1"])
    dispatch_pending(home, lambda t, p: None)
    dep = row.deployment_id
    hist = LatencyHistogram()
    for ms in (1.0, 2.0, 3.0):
        hist.record(ms)
    loading = shared.EventMessage(device_id="pi-1", deployment_id=dep, state="loading")
    committed = shared.EventMessage(device_id="pi-1", deployment_id=dep, state="committed")
    late_failure = shared.EventMessage(
        device_id="pi-1", deployment_id=dep, state="failed", ok=False, error_code="x"
    )
    telemetry = TelemetryMessage(
        device_id="pi-1",
        interval_s=1.0,
        models=[
            ModelStats(
                model=ModelRef(name="digits", version="1.0.0"),
                deployment_id=dep,
                requests=3,
                latency_counts=hist.counts,
                p95_ms=2.9,
            )
        ],
    )
    batch = [
        ("pi-1", StatusMessage(device_id="pi-1", online=True, agent_version="0.1.0")),
        ("pi-1", loading),
        ("pi-1", committed),
        ("pi-1", committed),  # a QoS 1 duplicate
        ("pi-1", late_failure),  # after commit: recorded, but the row stays committed
        ("pi-1", telemetry),
        ("ghost", StatusMessage(device_id="ghost", online=True)),
    ]
    with home.session() as s:
        assert ingest_many(s, batch) == 6
    assert _rows(home) == [("pi-1", "committed", 1)]
    with home.session() as s:
        states = [e.state for e in s.exec(select(Event).order_by(Event.id)).all()]
        assert states == ["loading", "committed", "failed"]
        (tel,) = s.exec(select(Telemetry)).all()
        assert (tel.requests, tel.p95_ms, tel.model) == (3, 2.9, "digits:1.0.0/fp32")
    status = {d.device: d for d in fleet_status(home)}
    # what ingest recorded (no daemon heartbeat here, so none is shown as online for sure)
    assert status["pi-1"].reported_online and status["pi-1"].model == "digits:1.0.0"
    assert status["pi-1"].p95_ms == 2.9
    assert not status["box-1"].reported_online

    with home.session() as s:  # the last will
        ingest_many(s, [("pi-1", StatusMessage(device_id="pi-1", online=False))])
    assert not {d.device: d for d in fleet_status(home)}["pi-1"].reported_online


def test_failed_and_rejected_events_mark_the_row_failed(home: Home, fleet: dict[str, str]) -> None:
    _hello(home, "pi-1")
    (row, *_) = record_deployment(home, "digits:1.0.0", devices=["pi-1"])
    dispatch_pending(home, lambda t, p: None)
    rejected = shared.EventMessage(
        device_id="pi-1",
        deployment_id=row.deployment_id,
        state="rejected",
        ok=False,
        error_code="replayed_sequence",
        message="old",
    )
    with home.session() as s:
        ingest_many(s, [("pi-1", rejected)])
    with home.session() as s:
        (dep,) = s.exec(select(Deployment)).all()
        assert (dep.state, dep.error_code) == ("failed", "replayed_sequence")


# -- the artifact server ------------------------------------------------------------


@pytest.fixture
def server(home: Home, fleet: dict[str, str]) -> Iterator[ArtifactServer]:
    srv = ArtifactServer(home.store, registry_token_check(home.engine), port=0).start()
    yield srv
    srv.stop()


def _artifact(home: Home) -> tuple[str, bytes]:
    with home.session() as s:
        (art,) = s.exec(select(Artifact)).all()
    return art.path, home.store.path_of(art.sha256).read_bytes()


def test_artifact_server_needs_a_device_token_and_serves_ranges(
    home: Home, fleet: dict[str, str], server: ArtifactServer
) -> None:
    path, data = _artifact(home)
    record_deployment(home, "digits:1.0.0", devices=["pi-1"])  # a device reads only its own
    base = f"http://127.0.0.1:{server.port}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    url = f"{base}/artifacts/{path}"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {fleet['pi-1']}"}
    whole = httpx.get(url, headers=auth)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Accept-Ranges"] == "bytes"
    part = httpx.get(url, headers={**auth, "Range": "bytes=100-"})
    assert part.status_code == 206
    assert part.content == data[100:]
    assert part.headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    mid = httpx.get(url, headers={**auth, "Range": "bytes=10-19"})
    assert mid.content == data[10:20]
    tail = httpx.get(url, headers={**auth, "Range": "bytes=-5"})
    assert tail.content == data[-5:]
    bad = httpx.get(url, headers={**auth, "Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416
    head = httpx.head(url, headers=auth)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)


@pytest.mark.parametrize(
    "path",
    [
        "/artifacts/../config.toml",
        "/artifacts/sha256/00/" + "ab" * 32,  # prefix does not match the digest
        "/artifacts/sha256/ab/" + "ab" * 32,  # well-formed, not stored
        "/artifacts/tmp/x",
        "/registry.db",
        "/keys/controller.key",
    ],
)
def test_artifact_server_serves_only_stored_content_addressed_paths(
    home: Home, fleet: dict[str, str], server: ArtifactServer, path: str
) -> None:
    auth = {"Authorization": f"Bearer {fleet['box-1']}"}
    r = httpx.get(f"http://127.0.0.1:{server.port}{path}", headers=auth)
    assert r.status_code == 404


def test_removed_device_token_stops_working(
    home: Home, fleet: dict[str, str], server: ArtifactServer
) -> None:
    path, _ = _artifact(home)
    record_deployment(home, "digits:1.0.0", devices=["box-1"])
    url = f"http://127.0.0.1:{server.port}/artifacts/{path}"
    auth = {"Authorization": f"Bearer {fleet['box-1']}"}
    assert httpx.get(url, headers=auth).status_code == 200
    remove_device(home, "box-1")
    assert httpx.get(url, headers=auth).status_code == 401


def test_metrics_render_counters_and_fleet_gauges(home: Home, fleet: dict[str, str]) -> None:
    metrics = Metrics()
    metrics.inc("edgefleet_messages_ingested_total", kind="status")
    metrics.inc("edgefleet_messages_ingested_total", 2, kind="status")
    _hello(home, "pi-1")
    record_deployment(home, "digits:1.0.0", devices=["pi-1", "box-1"])
    text = metrics.render(home.engine)
    assert 'edgefleet_messages_ingested_total{kind="status"} 3' in text
    assert "edgefleet_deployments_dispatched_total 0" in text
    assert 'edgefleet_devices{online="true"} 1' in text
    assert 'edgefleet_devices{online="false"} 1' in text
    assert 'edgefleet_device_deployments{state="pending"} 2.0' in text


def test_a_refusal_named_only_by_its_digest_fails_the_row_it_concerns(
    home: Home, fleet: dict[str, str]
) -> None:
    """An agent that cannot read a command (signed by a key it does not trust) reports an
    empty deployment id and the sha256 of the bytes it got: the row of that command fails,
    instead of staying `sent` forever."""
    _hello(home, "pi-1", "box-1")
    record_deployment(home, "digits:1.0.0", devices=["pi-1", "box-1"])
    sent: dict[str, bytes] = {}
    dispatch_pending(home, lambda topic, payload: sent.__setitem__(topic.split("/")[-2], payload))
    refusal = shared.EventMessage(
        device_id="pi-1",
        deployment_id="",
        state=shared.DeviceState.REJECTED,
        ok=False,
        error_code="unknown_key",
        message="signed by a key this device does not trust",
        details={"command_sha256": shared.sha256_bytes(sent["pi-1"])},
    )
    # the same digest from another device names nothing of its own
    stranger = refusal.model_copy(update={"device_id": "box-1"})
    with home.session(write=True) as s:
        ingest_many(s, [("pi-1", refusal), ("box-1", stranger)])
    with home.session() as s:
        rows = {
            name: (row.state, row.error_code)
            for row, name in s.exec(
                select(Deployment, Device.name).join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
            ).all()
        }
    assert rows == {"pi-1": ("failed", "unknown_key"), "box-1": ("sent", None)}


def test_ingest_keeps_each_devices_newest_p95_on_its_row(home: Home, fleet: dict[str, str]) -> None:
    def interval(at: datetime, *p95s: float) -> TelemetryMessage:
        models = [
            ModelStats(
                model=ModelRef(name="digits", version=str(i)),
                deployment_id=f"dep-{i}",
                requests=10,
                latency_counts=[0] * N_BUCKETS,
                p95_ms=p95,
            )
            for i, p95 in enumerate(p95s)
        ]
        return TelemetryMessage(device_id="pi-1", interval_s=10, models=models, sent_at=at)

    def newest() -> tuple[float | None, datetime | None]:
        with home.session() as s:
            device = s.exec(select(Device).where(Device.name == "pi-1")).one()
            return device.p95_ms, device.p95_at

    now = datetime.now(UTC).replace(microsecond=0)
    with home.session(write=True) as s:  # the newest interval wins, whatever the order
        ingest_many(s, [("pi-1", interval(now, 4.0, 2.5)), ("pi-1", interval(now - STEP, 9.0))])
    assert newest()[0] == 2.5  # during a swap: the model listed last, the new one
    assert as_utc(newest()[1]) == now
    with home.session(write=True) as s:  # late and redelivered intervals change nothing
        ingest_many(s, [("pi-1", interval(now - STEP * 2, 7.0)), ("pi-1", interval(now, 1.0))])
    assert newest()[0] == 2.5


STEP = timedelta(seconds=10)


@pytest.mark.parametrize("together", [False, True], ids=["apart", "in-one-batch"])
def test_a_status_older_than_the_one_stored_does_not_replace_it(
    home: Home, fleet: dict[str, str], together: bool
) -> None:
    """An agent's statuses queued while it was cut off can reach the broker after the
    newer one it published on reconnecting: the device's own stamp decides which stands."""
    _hello(home, "pi-1")
    (row, *_) = record_deployment(home, "digits:1.0.0", devices=["pi-1"])
    dispatch_pending(home, lambda t, p: None)
    dep = row.deployment_id
    t0 = datetime.now(UTC)
    serving = shared.ServingModel(model=ModelRef(name="digits", version="1.0.0"),
                                  deployment_id=dep, sha256="a" * 64)  # fmt: skip
    newer = StatusMessage(device_id="pi-1", online=True, state="committed", deployment_id=dep,
                          active=serving, last_sequence=1, sent_at=t0)  # fmt: skip
    older = StatusMessage(device_id="pi-1", online=True, state="switching", deployment_id=dep,
                          last_sequence=1, sent_at=t0 - timedelta(seconds=2))  # fmt: skip
    batches = [[newer, older]] if together else [[newer], [older]]
    for batch in batches:
        with home.session() as s:
            ingest_many(s, [("pi-1", m) for m in batch])
    with home.session() as s:
        device = s.exec(select(Device).where(Device.name == "pi-1")).one()
        assert (device.serving_deployment_id, device.status_state) == (dep, "committed")
    assert _rows(home) == [("pi-1", "committed", 1)]
