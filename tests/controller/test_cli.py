"""Every ``edgefleet`` command against a real home folder and SQLite file."""

from __future__ import annotations

import json
import sqlite3
import stat
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.controller import SCHEMA_VERSION
from edgefleet.shared import SmokeTest, load_public_key, sha256_file

from .conftest import Cli, sqlite_snapshot


def test_init_creates_home_key_config_and_database(cli: Cli, home_dir: Path) -> None:
    result = cli.ok("init")
    key = home_dir / "keys" / "controller.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((home_dir / "config.toml").stat().st_mode) == 0o600  # may hold a login
    assert "key id" in result.stdout
    config = tomllib.loads((home_dir / "config.toml").read_text())
    assert config["broker_url"].startswith("mqtt://")
    load_public_key((home_dir / "keys" / "controller.pub").read_text())
    with sqlite3.connect(home_dir / "registry.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        (version,) = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    assert version == SCHEMA_VERSION


def test_init_twice_keeps_the_key(cli: Cli, home_dir: Path) -> None:
    cli.ok("init")
    key = (home_dir / "keys" / "controller.key").read_bytes()
    again = cli.ok("init")
    assert "created" not in again.stdout
    assert (home_dir / "keys" / "controller.key").read_bytes() == key


def test_a_command_before_init_says_to_run_init(cli: Cli) -> None:
    result = cli("device", "list")
    assert result.exit_code == 2
    assert "edgefleet init" in result.stderr


def test_home_option_beats_the_environment(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    cli.ok("--home", str(other), "init")
    assert (other / "registry.db").is_file()


def test_device_add_writes_an_agent_config_the_agent_accepts(
    cli: Cli, initialised: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pi-1.toml"
    result = cli.ok(
        "device", "add", "pi-1", "--profile", "rpi4", "--label", "site=lab", "--out", str(out)
    )
    assert "pi-1" in result.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    config = tomllib.loads(out.read_text())
    assert config["device_id"] == "pi-1"
    assert config["profile"] == "rpi4"
    assert config["artifact_token"] != config["broker_password"]  # two separate secrets
    assert min(len(config["artifact_token"]), len(config["broker_password"])) >= 40
    public = (initialised / "keys" / "controller.pub").read_text().strip()
    assert config["trusted_keys"] == [public]
    agent_config = pytest.importorskip("edgefleet.agent._config")
    loaded = agent_config.load_config(out, env={})
    assert loaded.device_id == "pi-1"
    with sqlite3.connect(initialised / "registry.db") as conn:
        row = conn.execute("SELECT profile, labels, token_sha256 FROM device").fetchone()
    assert row[0] == "rpi4"
    assert json.loads(row[1]) == {"site": "lab"}
    assert row[2] != config["artifact_token"]  # only a hash is kept


def test_device_add_without_out_prints_the_config(cli: Cli, initialised: Path) -> None:
    result = cli.ok("device", "add", "box-1", "--profile", "x86-edge")
    assert tomllib.loads(result.stdout)["device_id"] == "box-1"
    assert "credentials" in result.stderr


def test_each_device_gets_its_own_token(cli: Cli, initialised: Path) -> None:
    a = tomllib.loads(cli.ok("device", "add", "a", "--profile", "rpi4").stdout)
    b = tomllib.loads(cli.ok("device", "add", "b", "--profile", "rpi4").stdout)
    assert a["artifact_token"] != b["artifact_token"]


def test_device_list_show_and_remove(cli: Cli, initialised: Path) -> None:
    cli.ok("device", "add", "pi-1", "--profile", "rpi4", "-l", "site=lab", "-l", "room=2")
    cli.ok("device", "add", "pi-2", "--profile", "rpi5", "-l", "site=home")
    table = cli.ok("device", "list").stdout
    assert "pi-1" in table and "pi-2" in table and "rpi5" in table

    listed = json.loads(cli.ok("device", "list", "--json").stdout)
    assert [d["name"] for d in listed] == ["pi-1", "pi-2"]
    assert listed[0]["labels"] == {"site": "lab", "room": "2"}
    by_label = json.loads(cli.ok("device", "list", "--label", "site=home", "--json").stdout)
    assert [d["name"] for d in by_label] == ["pi-2"]
    by_profile = json.loads(cli.ok("device", "list", "--profile", "rpi4", "--json").stdout)
    assert [d["name"] for d in by_profile] == ["pi-1"]

    shown = json.loads(cli.ok("device", "show", "pi-2", "--json").stdout)
    assert shown["profile"] == "rpi5"
    assert shown["online"] is False
    assert "rpi5" in cli.ok("device", "show", "pi-2").stdout

    declined = cli("device", "remove", "pi-1", input="n\n")
    assert declined.exit_code == 1
    assert len(json.loads(cli.ok("device", "list", "--json").stdout)) == 2
    cli.ok("device", "remove", "pi-1", "--yes")
    assert [d["name"] for d in json.loads(cli.ok("device", "list", "--json").stdout)] == ["pi-2"]


def test_model_add_stores_the_file_and_its_smoke_test(
    cli: Cli, initialised: Path, model_file: Path, sample_npz: Path
) -> None:
    result = cli.ok(
        "model", "add", str(model_file), "--name", "digits", "--version", "1.0.0",
        "--sample", str(sample_npz),
    )  # fmt: skip
    assert "digits:1.0.0" in result.stdout
    digest = sha256_file(model_file)
    stored = initialised / "artifacts" / "sha256" / digest[:2] / digest
    assert stored.read_bytes() == model_file.read_bytes()

    shown = json.loads(cli.ok("model", "show", "digits:1.0.0", "--json").stdout)
    assert shown["io"]["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 64]}]
    assert shown["io"]["outputs"][0]["name"] == "probs"
    assert shown["variants"] == [
        {"name": "fp32", "sha256": digest, "size": model_file.stat().st_size, "profile": None,
         "metrics": {}}
    ]  # fmt: skip
    smoke = SmokeTest.model_validate(shown["smoke_test"])
    x = smoke.inputs["input"].to_numpy()
    with np.load(sample_npz) as npz:
        np.testing.assert_array_equal(x, npz["x"][:4].astype(np.float32))
    session = ort.InferenceSession(str(stored), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probs"], {"input": x})
    np.testing.assert_allclose(smoke.outputs["probs"].to_numpy(), probs, rtol=1e-6)


def test_model_add_generates_a_sample_without_one(
    cli: Cli, initialised: Path, model_file: Path
) -> None:
    added = json.loads(
        cli.ok("model", "add", str(model_file), "-n", "digits", "-v", "1", "--json").stdout
    )
    smoke = SmokeTest.model_validate(added["smoke_test"])
    assert smoke.inputs["input"].shape == [4, 64]
    assert smoke.outputs["probs"].shape == [4, 10]
    np.testing.assert_allclose(smoke.outputs["probs"].to_numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_model_list_and_show(
    cli: Cli, initialised: Path, model_file: Path, model_file_v2: Path
) -> None:
    cli.ok("model", "add", str(model_file), "--name", "digits", "--version", "1.0.0")
    cli.ok("model", "add", str(model_file_v2), "--name", "digits", "--version", "2.0.0")
    cli.ok("model", "add", str(model_file), "--name", "other", "--version", "1")
    listed = json.loads(cli.ok("model", "list", "--json").stdout)
    assert [(m["name"], m["version"]) for m in listed] == [
        ("digits", "1.0.0"), ("digits", "2.0.0"), ("other", "1"),
    ]  # fmt: skip
    only = json.loads(cli.ok("model", "list", "--name", "other", "--json").stdout)
    assert [m["version"] for m in only] == ["1"]
    table = cli.ok("model", "list").stdout
    assert "2.0.0" in table and "other" in table
    shown = cli.ok("model", "show", "digits:2.0.0").stdout
    assert "probs" in shown and sha256_file(model_file_v2) in shown.replace("\n", "")
    # the same bytes under two names are stored once
    with sqlite3.connect(initialised / "registry.db") as conn:
        assert conn.execute("SELECT count(*) FROM artifact").fetchone()[0] == 2


def test_profile_list_and_show(cli: Cli, home_dir: Path) -> None:
    profiles = json.loads(cli.ok("profile", "list", "--json").stdout)
    names = [p["name"] for p in profiles]
    assert {"rpi4", "rpi5", "x86-edge"} <= set(names)
    rpi5 = next(p for p in profiles if p["name"] == "rpi5")
    assert "dotprod" in rpi5["isa_features"]
    assert rpi5["budgets"]["max_latency_ms"] > 0
    assert "x86-edge" in cli.ok("profile", "list").stdout
    assert json.loads(cli.ok("profile", "show", "rpi4", "--json").stdout)["arch"] == "arm64"


def test_a_profile_in_the_home_folder_is_usable(cli: Cli, initialised: Path) -> None:
    (initialised / "profiles" / "jetson.toml").write_text(
        'name = "jetson"\narch = "arm64"\ncores = 6\nram_mb = 8192\n'
        "[runtime]\nexecution_providers = ['CUDAExecutionProvider', 'CPUExecutionProvider']\n"
        "[budgets]\nmax_size_bytes = 1000000\nmax_latency_ms = 3\nmax_accuracy_drop = 0.01\n"
    )
    cli.ok("device", "add", "nano-1", "--profile", "jetson")
    with sqlite3.connect(initialised / "registry.db") as conn:
        spec = conn.execute("SELECT spec FROM profile WHERE name='jetson'").fetchone()[0]
    assert json.loads(spec)["runtime"]["execution_providers"][0] == "CUDAExecutionProvider"


def test_only_upgrade_brings_an_old_database_up_to_date(cli: Cli, initialised: Path) -> None:
    from edgefleet.controller import create_engine, current_version, upgrade

    db = initialised / "registry.db"
    db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{db}")
    upgrade(engine, target=1)
    assert current_version(engine) == 1
    engine.dispose()
    refused = cli("device", "list")
    assert refused.exit_code == 2
    assert "run `edgefleet upgrade`" in refused.output
    assert sqlite_snapshot(db)["schema_version"][-1][0] == 1
    cli.ok("upgrade")
    assert sqlite_snapshot(db)["schema_version"][-1][0] == SCHEMA_VERSION
    cli.ok("device", "list")
