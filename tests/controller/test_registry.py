"""The service layer on SQLite and (with EDGEFLEET_TEST_POSTGRES_URL) PostgreSQL."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlmodel import select

from edgefleet.controller import (
    Deployment,
    Device,
    DeviceCreate,
    Event,
    Home,
    ModelVersion,
    Telemetry,
    Variant,
    add_device,
    add_model,
    get_device,
    get_model_version,
    list_devices,
    list_models,
    parse_labels,
    parse_model_ref,
    remove_device,
)
from edgefleet.shared import sha256_file
from edgefleet.shared.errors import AlreadyExists, ConfigError, ModelLoadError, NotFound


def _count(home: Home, table: type) -> int:
    with home.session() as session:
        return len(session.exec(select(table)).all())


def test_add_list_show_remove_device(home: Home, tmp_path: Path) -> None:
    out = tmp_path / "agent.toml"
    enrolled = add_device(
        home, DeviceCreate(name="pi-1", profile="rpi4", labels={"site": "lab"}), out=out
    )
    assert enrolled.written_to == out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text() == enrolled.agent_config
    add_device(home, DeviceCreate(name="pi-2", profile="rpi5", labels={"site": "home"}))

    assert [d.name for d in list_devices(home)] == ["pi-1", "pi-2"]
    assert [d.name for d in list_devices(home, profile="rpi5")] == ["pi-2"]
    assert [d.name for d in list_devices(home, labels={"site": "lab"})] == ["pi-1"]
    assert get_device(home, "pi-1").labels == {"site": "lab"}
    assert get_device(home, "pi-1").created_at.tzinfo is not None

    remove_device(home, "pi-1")
    with pytest.raises(NotFound):
        get_device(home, "pi-1")
    assert [d.name for d in list_devices(home)] == ["pi-2"]


def test_duplicate_device_is_refused_and_writes_no_file(home: Home, tmp_path: Path) -> None:
    add_device(home, DeviceCreate(name="pi-1", profile="rpi4"))
    out = tmp_path / "second.toml"
    with pytest.raises(AlreadyExists):
        add_device(home, DeviceCreate(name="pi-1", profile="rpi4"), out=out)
    assert not out.exists()
    assert _count(home, Device) == 1


def test_unknown_profile_and_bad_names(home: Home) -> None:
    with pytest.raises(NotFound, match="unknown profile"):
        add_device(home, DeviceCreate(name="pi-1", profile="pdp11"))
    with pytest.raises(ConfigError, match="invalid device id"):
        DeviceCreate(name="has space", profile="rpi4")
    assert _count(home, Device) == 0


def test_the_profile_row_follows_the_profile_file(home: Home) -> None:
    from edgefleet.controller import Profile

    add_device(home, DeviceCreate(name="pi-1", profile="rpi4"))
    with home.session() as session:
        row = session.get(Profile, "rpi4")
    assert row is not None
    assert row.arch == "arm64"
    assert row.spec["budgets"]["max_accuracy_drop"] == pytest.approx(0.01)


def test_removing_a_device_removes_its_history(home: Home, model_file: Path) -> None:
    add_device(home, DeviceCreate(name="pi-1", profile="rpi4"))
    add_device(home, DeviceCreate(name="pi-2", profile="rpi4"))
    add_model(home, model_file, name="digits", version="1")
    with home.session() as session:
        variant = session.exec(select(Variant)).one()
        for name in ("pi-1", "pi-2"):
            device = session.exec(select(Device).where(Device.name == name)).one()
            session.add(
                Deployment(deployment_id="dep-1", device_id=device.id, variant_id=variant.id)
            )
            session.add(Event(device_id=device.id, deployment_id="dep-1", state="downloading"))
            session.add(Telemetry(device_id=device.id, requests=5, p95_ms=3.2))
    remove_device(home, "pi-1")
    assert (_count(home, Deployment), _count(home, Event), _count(home, Telemetry)) == (1, 1, 1)


def test_add_model_and_read_it_back(home: Home, model_file: Path) -> None:
    added = add_model(home, model_file, name="digits", version="1.0.0")
    assert added.ref == "digits:1.0.0"
    assert added.variants[0].sha256 == sha256_file(model_file)
    assert home.store.path_of(added.variants[0].sha256).read_bytes() == model_file.read_bytes()
    home.store.verify(added.variants[0].sha256)
    shown = get_model_version(home, "digits:1.0.0")
    assert shown == added
    assert [m.ref for m in list_models(home)] == ["digits:1.0.0"]


def test_duplicate_version_is_refused(home: Home, model_file: Path, model_file_v2: Path) -> None:
    add_model(home, model_file, name="digits", version="1.0.0")
    with pytest.raises(AlreadyExists, match=r"digits:1\.0\.0"):
        add_model(home, model_file_v2, name="digits", version="1.0.0")
    assert _count(home, ModelVersion) == 1
    add_model(home, model_file_v2, name="digits", version="1.0.1")
    assert [m.version for m in list_models(home, name="digits")] == ["1.0.0", "1.0.1"]


def test_a_file_onnx_runtime_cannot_load_is_refused(home: Home, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07" + b"\xff" * 64)
    with pytest.raises(ModelLoadError):
        add_model(home, bad, name="bad", version="1")
    assert _count(home, ModelVersion) == 0
    assert not any(home.store.root.glob("sha256/*/*"))


def test_unknown_model(home: Home) -> None:
    with pytest.raises(NotFound):
        get_model_version(home, "nothing:1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("digits:1.0.0", ("digits", "1.0.0")), ("a.b-c:2+build.1", ("a.b-c", "2+build.1"))],
)
def test_parse_model_ref(text: str, expected: tuple[str, str]) -> None:
    assert parse_model_ref(text) == expected


@pytest.mark.parametrize("text", ["digits", ":1", "digits:", ""])
def test_parse_model_ref_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_model_ref(text)


def test_parse_labels() -> None:
    assert parse_labels(["a=1", "b=x=y", "zone/rack=3"]) == {"a": "1", "b": "x=y", "zone/rack": "3"}
    for bad in ("foo", "=v", "k=", " k=v"):
        with pytest.raises(ConfigError, match="malformed label"):
            parse_labels([bad])
