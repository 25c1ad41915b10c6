"""Least privilege for artifacts: a device's token reads the artifacts of its own deployments
and of the benchmark orders sent to it (while they last), and nothing else; anything else is
answered exactly like a file that does not exist. The MQTT password is another secret.
The daemon's real HTTP server on a free port, real registries (SQLite, PostgreSQL)."""

from __future__ import annotations

import base64
import hashlib
import json
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import select

from edgefleet import shared
from edgefleet.controller import Home
from edgefleet.controller import deploy as record_deployment
from edgefleet.controller.catalog import add_model, get_model_version
from edgefleet.controller.compress import REFERENCE, Candidate
from edgefleet.controller.daemon import ArtifactServer, registry_token_check
from edgefleet.controller.fleet import add_device, token_sha256
from edgefleet.controller.registry import (
    SCHEMA_VERSION,
    ArtifactGrant,
    ArtifactStore,
    Device,
    DeviceCreate,
    create_engine,
    upgrade,
)
from edgefleet.harness import write_digits_model
from edgefleet.shared import BenchmarkCommand, BenchmarkOrder, DeviceState, EventMessage


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fleet(home: Home, model_file: Path) -> dict[str, dict[str, str]]:
    """Two devices of one profile, their agent.toml values, and the digits model."""
    configs = {}
    for name in ("pi-1", "pi-2"):
        enrolled = add_device(home, DeviceCreate(name=name, profile="rpi4"))
        configs[name] = tomllib.loads(enrolled.agent_config)
    add_model(home, model_file, name="digits", version="1.0.0")
    return configs


@pytest.fixture
def server(home: Home, fleet: dict[str, dict[str, str]], clock: Clock) -> Iterator[ArtifactServer]:
    srv = ArtifactServer(home.store, registry_token_check(home.engine, clock=clock)).start()
    yield srv
    srv.stop()


def _get(server: ArtifactServer, sha: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"http://127.0.0.1:{server.port}/artifacts/{ArtifactStore.relative_path(sha)}"
    return httpx.get(url, headers=headers)


def _answer(r: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    """Everything a client can see of an answer, but the date."""
    return r.status_code, r.content, {k: v for k, v in r.headers.items() if k != "date"}


def _original_sha(home: Home) -> str:
    return get_model_version(home, "digits:1.0.0").variants[0].sha256


def test_the_mqtt_password_and_the_artifact_token_are_separate_secrets(
    home: Home, fleet: dict[str, dict[str, str]]
) -> None:
    config = fleet["pi-1"]
    assert config["broker_password"] != config["artifact_token"]
    with home.session() as s:
        device = s.exec(select(Device).where(Device.name == "pi-1")).one()
    assert device.token_sha256 == token_sha256(config["artifact_token"])
    # Mosquitto's $7$: PBKDF2-SHA512 over the password with the stored salt and rounds
    _, _, rounds, salt, digest = device.mqtt_password_hash.split("$")

    def pbkdf2(secret: str) -> str:
        raw = hashlib.pbkdf2_hmac("sha512", secret.encode(), base64.b64decode(salt), int(rounds))
        return base64.b64encode(raw).decode()

    assert pbkdf2(config["broker_password"]) == digest
    assert pbkdf2(config["artifact_token"]) != digest


def test_a_device_reads_only_its_own_deployments_artifact(
    home: Home, fleet: dict[str, dict[str, str]], server: ArtifactServer
) -> None:
    sha = _original_sha(home)
    data = home.store.path_of(sha).read_bytes()
    record_deployment(home, "digits:1.0.0", devices=["pi-1"])
    mine = _get(server, sha, fleet["pi-1"]["artifact_token"])
    assert mine.status_code == 200 and mine.content == data
    theirs = _get(server, sha, fleet["pi-2"]["artifact_token"])
    missing = _get(server, "ab" * 32, fleet["pi-2"]["artifact_token"])
    assert theirs.status_code == 404
    assert _answer(theirs) == _answer(missing)  # nothing tells "not yours" from "not there"
    assert _get(server, sha, fleet["pi-2"]["broker_password"]).status_code == 401
    assert _get(server, sha, None).status_code == 401


def test_a_finished_deployment_still_counts_for_rolling_back(
    home: Home, fleet: dict[str, dict[str, str]], server: ArtifactServer
) -> None:
    sha = _original_sha(home)
    record_deployment(home, "digits:1.0.0", devices=["pi-2"])
    with home.engine.begin() as conn:
        conn.execute(sa.text("UPDATE deployment SET state = 'superseded'"))
    assert _get(server, sha, fleet["pi-2"]["artifact_token"]).status_code == 200


def test_a_benchmark_candidate_is_readable_by_its_device_until_the_order_expires(
    home: Home,
    fleet: dict[str, dict[str, str]],
    server: ArtifactServer,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """``compress --measure-on``'s orders, through a link that plays the device: while the
    order is out, the device fetches its candidate and the other device is refused."""
    from edgefleet.controller.catalog._device_bench import DeviceBenchmarks

    version = get_model_version(home, "digits:1.0.0")
    candidate = Candidate(REFERENCE, write_digits_model(tmp_path / "cand.onnx", seed=7))
    seen: dict[str, Any] = {}

    class PlayedDevice:
        """The link: on each order, fetch as both devices and answer as pi-1 would."""

        device = "pi-1"

        def __init__(self) -> None:
            self.answers: list[EventMessage] = []

        def publish(self, payload: bytes) -> None:
            command = shared.decode(payload)
            assert isinstance(command, BenchmarkCommand)
            order = shared.parse_signed_document(command.signed.payload_bytes())
            assert isinstance(order, BenchmarkOrder)
            seen["expires"] = int(order.expires_at.timestamp())
            seen["sha"] = order.artifact.sha256
            for name in ("pi-1", "pi-2"):
                seen[name] = _get(
                    server, order.artifact.sha256, fleet[name]["artifact_token"]
                ).status_code
            self.answers.append(
                EventMessage(
                    device_id="pi-1",
                    deployment_id=order.benchmark_id,
                    state=DeviceState.BENCHMARKED,
                    details={"p50_ms": 1.0, "p95_ms": 2.0},
                )
            )

        def next(self, timeout: float) -> EventMessage | None:
            return self.answers.pop() if self.answers else None

    bench = DeviceBenchmarks(
        home, PlayedDevice(), home.profile("rpi4"),  # type: ignore[arg-type]
        model="digits", version="1.0.0", smoke_test=version.smoke_test, runs=3, timeout_s=30,
    )  # fmt: skip
    assert bench([candidate]) == {REFERENCE: (1.0, 2.0)}
    assert (seen["pi-1"], seen["pi-2"]) == (200, 404)
    sha = seen["sha"]
    with home.session() as s:
        (grant,) = s.exec(select(ArtifactGrant)).all()
        device = s.exec(select(Device).where(Device.name == "pi-1")).one()
    assert (grant.device_id, grant.artifact_sha256) == (device.id, sha)
    assert int(grant.expires_at.replace(tzinfo=UTC).timestamp()) == seen["expires"]

    assert _get(server, sha, fleet["pi-1"]["artifact_token"]).status_code == 200
    clock.now = grant.expires_at.replace(tzinfo=UTC) + timedelta(seconds=1)
    assert _get(server, sha, fleet["pi-1"]["artifact_token"]).status_code == 404

    bench.discard()  # the run is over: its grants go with its files
    with home.session() as s:
        assert s.exec(select(ArtifactGrant)).all() == []


def test_a_device_enrolled_with_one_secret_for_both_keeps_working(
    database_url: str, tmp_path: Path, model_file: Path
) -> None:
    """A registry of schema 4, whose device used its token as MQTT password too, upgrades;
    the device still reads its deployment's artifact."""
    engine = create_engine(database_url)
    store = ArtifactStore(tmp_path / "artifacts")
    stored = store.put_file(model_file)
    token = "old-style-secret-for-mqtt-and-artifacts"
    now = datetime.now(UTC)
    statements = (
        "INSERT INTO profile (name, description, arch, cores, ram_mb, spec, source, updated_at)"
        " VALUES ('rpi4', '', 'arm64', 4, 4096, :spec, '', :now)",
        "INSERT INTO device (id, name, profile, labels, token_sha256, mqtt_password_hash,"
        " created_at, last_sequence) VALUES (1, 'pi-old', 'rpi4', :spec, :tok, '$7$x', :now, 1)",
        "INSERT INTO model (id, name, created_at) VALUES (1, 'digits', :now)",
        "INSERT INTO model_version (id, model_id, version, io, smoke_test, source_name,"
        " created_at) VALUES (1, 1, '1.0.0', :spec, :spec, 'd.onnx', :now)",
        "INSERT INTO artifact (sha256, size, path, format, created_at)"
        " VALUES (:sha, :size, :path, 'onnx', :now)",
        "INSERT INTO variant (id, model_version_id, name, artifact_sha256, metrics, created_at)"
        " VALUES (1, 1, 'fp32', :sha, :spec, :now)",
        "INSERT INTO deployment (deployment_id, device_id, variant_id, sequence, state,"
        " created_at, updated_at) VALUES ('dep-1', 1, 1, 1, 'committed', :now, :now)",
    )
    values = {
        "spec": json.dumps({}), "tok": token_sha256(token), "now": now,
        "sha": stored.sha256, "size": stored.size, "path": stored.path,
    }  # fmt: skip
    try:
        assert upgrade(engine, target=4) == [1, 2, 3, 4]
        with engine.begin() as conn:
            for sql in statements:
                conn.execute(sa.text(sql), values)
        assert upgrade(engine) == list(range(5, SCHEMA_VERSION + 1))
        srv = ArtifactServer(store, registry_token_check(engine)).start()
        try:
            r = _get(srv, stored.sha256, token)
            assert r.status_code == 200 and r.content == model_file.read_bytes()
        finally:
            srv.stop()
    finally:
        engine.dispose()
