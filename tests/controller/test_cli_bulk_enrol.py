"""`edgefleet device add --from devices.csv --out-dir DIR`: many devices in one go, against a
real home folder and SQLite file; every line checked first, nothing written if one is bad;
and a real Mosquitto taking the credentials of the configs it wrote."""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import sqlite3
import stat
import tomllib
from pathlib import Path
from urllib.parse import quote

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent import load_config
from edgefleet.controller import fleet, load_settings, open_home
from edgefleet.controller.registry import DeviceCreate
from edgefleet.harness import Broker, free_port

from .conftest import Cli, files_under, sqlite_snapshot

PROFILES = ("rpi4", "rpi5", "x86-edge")


def write_csv(path: Path, lines: list[str], header: str = "name,profile,labels,state_dir") -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def fleet_csv(path: Path, n: int) -> Path:
    lines = [
        f"dev-{i:03d},{PROFILES[i % 3]},site=s{i % 4};rack=r{i}," + ("/srv/ef" if i % 2 else "")
        for i in range(n)
    ]
    return write_csv(path, lines)


def registry_devices(db: Path) -> dict[str, tuple[str, dict[str, str], str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT name, profile, labels, token_sha256, mqtt_password_hash FROM device"
        ).fetchall()
    return {r[0]: (r[1], json.loads(r[2]), r[3], r[4]) for r in rows}


def password_matches(stored: str, password: str) -> bool:
    """Mosquitto's ``$7$`` check, done here from the format rather than by our own code."""
    _, seven, iterations, salt, digest = stored.split("$")
    assert seven == "7"
    again = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(iterations)
    )
    return base64.b64encode(again).decode() == digest


def test_fifty_devices_from_a_csv(cli: Cli, initialised: Path, tmp_path: Path) -> None:
    csv_file = fleet_csv(tmp_path / "devices.csv", 50)
    out = tmp_path / "configs"
    result = cli.ok("device", "add", "--from", str(csv_file), "--out-dir", str(out),
                    "--label", "owner=ops", "--label", "site=default")  # fmt: skip
    assert "enrolled 50 devices" in result.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o700

    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"dev-{i:03d}.toml" for i in range(50)]
    stored = registry_devices(initialised / "registry.db")
    assert sorted(stored) == [f"dev-{i:03d}" for i in range(50)]
    public = (initialised / "keys" / "controller.pub").read_text().strip()
    passwords, tokens = set(), set()
    for i, path in enumerate(files):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        config = load_config(path, env={})  # the agent's own loader accepts it
        raw = tomllib.loads(path.read_text())
        name = f"dev-{i:03d}"
        assert config.device_id == name
        assert config.profile == PROFILES[i % 3]
        assert config.state_dir == Path("/srv/ef" if i % 2 else fleet.DEFAULT_STATE_DIR)
        assert raw["trusted_keys"] == [public]
        profile, labels, token_hash, password_hash = stored[name]
        assert profile == PROFILES[i % 3]
        # the line's labels win over --label; the others are added
        assert labels == {"owner": "ops", "site": f"s{i % 4}", "rack": f"r{i}"}
        # the registry keeps only hashes, and they are this file's secrets
        assert token_hash == hashlib.sha256(raw["artifact_token"].encode()).hexdigest()
        assert password_matches(password_hash, raw["broker_password"])
        assert raw["artifact_token"] != raw["broker_password"]
        passwords.add(raw["broker_password"])
        tokens.add(raw["artifact_token"])
    assert len(passwords) == len(tokens) == 50  # every device its own credentials


def test_bad_lines_are_all_reported_and_nothing_is_written(
    cli: Cli, initialised: Path, tmp_path: Path
) -> None:
    cli.ok("device", "add", "pi-0", "--profile", "rpi4")
    before = sqlite_snapshot(initialised / "registry.db")
    csv_file = write_csv(
        tmp_path / "devices.csv",
        [
            "pi-1,rpi4,site=lab,",  # line 2: good
            "pi 2,rpi4,,",  # 3: a space in the id
            "",  # 4: blank, skipped
            "# pi-3,rpi4,,",  # 5: a comment
            "pi-4,rpi9,,",  # 6: no such profile
            "pi-5,rpi4,site,",  # 7: a label without a value
            "pi-1,rpi5,,",  # 8: twice in the file
            "pi-6,,,",  # 9: no profile
            "pi-7,rpi4,,/x,extra",  # 10: a field too many
            "pi-8,rpi5,,",  # 11: good
        ],
    )
    out = tmp_path / "configs"
    result = cli("device", "add", "--from", str(csv_file), "--out-dir", str(out))
    assert result.exit_code == 2
    err = result.stderr
    assert "6 bad lines" in err and "nothing was enrolled" in err
    for line, what in [
        (3, "invalid device id 'pi 2'"),
        (6, "unknown profile 'rpi9'"),
        (7, "malformed label 'site'"),
        (8, "device 'pi-1' is also on line 2"),
        (9, "no profile"),
        (10, "5 fields"),
    ]:
        assert f"line {line}: {what}" in err
    assert "line 2:" not in err and "line 11:" not in err
    assert "Traceback" not in result.output
    assert not out.exists()
    assert sqlite_snapshot(initialised / "registry.db") == before


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("name,profile,lables", "unknown column 'lables'"),
        ("name,labels", "the header has no 'profile' column"),
        ("profile,labels", "the header has no 'name' column"),
        ("name,profile,name", "column 'name' is named twice"),
    ],
)
def test_a_bad_header_is_refused(
    cli: Cli, initialised: Path, tmp_path: Path, header: str, message: str
) -> None:
    csv_file = write_csv(tmp_path / "devices.csv", ["pi-1,rpi4,"], header=header)
    result = cli("device", "add", "--from", str(csv_file), "--out-dir", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert f"line 1: {message}" in result.stderr
    assert registry_devices(initialised / "registry.db") == {}


def test_profile_option_gives_lines_without_one_a_profile(
    cli: Cli, initialised: Path, tmp_path: Path
) -> None:
    csv_file = write_csv(tmp_path / "devices.csv", ["a", "b"], header="name")
    cli.ok("device", "add", "--from", str(csv_file), "--out-dir", str(tmp_path / "out"),
           "--profile", "rpi5")  # fmt: skip
    assert {n: d[0] for n, d in registry_devices(initialised / "registry.db").items()} == {
        "a": "rpi5",
        "b": "rpi5",
    }


def test_an_enrolled_name_is_refused_unless_skipped(
    cli: Cli, initialised: Path, tmp_path: Path
) -> None:
    cli.ok("device", "add", "dev-001", "--profile", "rpi4")
    cli.ok("device", "add", "dev-003", "--profile", "rpi4")
    before = sqlite_snapshot(initialised / "registry.db")
    csv_file = fleet_csv(tmp_path / "devices.csv", 5)
    out = tmp_path / "configs"
    refused = cli("device", "add", "--from", str(csv_file), "--out-dir", str(out))
    assert refused.exit_code == 1
    assert "2 devices already enrolled" in refused.stderr
    assert "dev-001" in refused.stderr and "dev-003" in refused.stderr
    assert sqlite_snapshot(initialised / "registry.db") == before
    assert not out.exists()

    result = cli.ok("device", "add", "--from", str(csv_file), "--out-dir", str(out),
                    "--skip-existing", "--json")  # fmt: skip
    summary = json.loads(result.stdout)
    assert [d["name"] for d in summary["enrolled"]] == ["dev-000", "dev-002", "dev-004"]
    assert summary["skipped"] == ["dev-001", "dev-003"]
    assert summary["out_dir"] == str(out)
    for d in summary["enrolled"]:
        assert load_config(Path(d["written_to"]), env={}).device_id == d["name"]
    assert sorted(p.name for p in out.iterdir()) == ["dev-000.toml", "dev-002.toml", "dev-004.toml"]
    assert len(registry_devices(initialised / "registry.db")) == 5


def test_an_existing_config_file_is_never_overwritten(
    cli: Cli, initialised: Path, tmp_path: Path
) -> None:
    out = tmp_path / "configs"
    out.mkdir()
    (out / "dev-002.toml").write_text("someone else's\n")
    before = sqlite_snapshot(initialised / "registry.db")
    result = cli("device", "add", "--from", str(fleet_csv(tmp_path / "d.csv", 4)),
                 "--out-dir", str(out))  # fmt: skip
    assert result.exit_code == 2
    assert "dev-002.toml" in result.stderr
    assert (out / "dev-002.toml").read_text() == "someone else's\n"
    assert files_under(out) == ["dev-002.toml"]
    assert sqlite_snapshot(initialised / "registry.db") == before


def test_a_failure_halfway_leaves_no_device_and_no_file(
    initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up at the 30th config: the transaction rolls back, the 29 files go."""
    from edgefleet.controller.fleet import _enrol
    from edgefleet.shared.errors import ConfigError

    real_write, calls = _enrol.write_private, []

    def full_at_30(path: Path, text: str) -> None:
        calls.append(path)
        if len(calls) == 30:
            raise ConfigError(f"cannot write {path}: No space left on device")
        real_write(path, text)

    monkeypatch.setattr(_enrol, "write_private", full_at_30)
    before = sqlite_snapshot(initialised / "registry.db")
    home = open_home(load_settings(initialised))
    try:
        with pytest.raises(ConfigError, match="No space left"):
            fleet.enrol_from_csv(home, fleet_csv(tmp_path / "d.csv", 50), tmp_path / "out")
    finally:
        home.close()
    assert files_under(tmp_path / "out") == []
    assert sqlite_snapshot(initialised / "registry.db") == before


def test_the_library_names_devices_given_without_lines(initialised: Path, tmp_path: Path) -> None:
    from edgefleet.shared.errors import ConfigError

    twice = [
        fleet.NewDevice(DeviceCreate(name="x", profile="rpi4")),
        fleet.NewDevice(DeviceCreate(name="y", profile="nope")),
        fleet.NewDevice(DeviceCreate(name="x", profile="rpi4")),
    ]
    home = open_home(load_settings(initialised))
    try:
        with pytest.raises(ConfigError) as refused:
            fleet.add_devices(home, twice, tmp_path / "out")
        assert "device 'y': unknown profile 'nope'" in refused.value.message
        assert "device 'x': device 'x' is listed twice" in refused.value.message
        done = fleet.add_devices(home, twice[:1], tmp_path / "out")
    finally:
        home.close()
    assert [d.name for d in done.enrolled] == ["x"]
    assert done.config_path("x") == tmp_path / "out" / "x.toml"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pi-1", "--from", "{csv}", "--out-dir", "{out}"], "give no NAME"),
        (["--from", "{csv}", "--out", "{out}/a.toml"], "give no NAME and no --out"),
        (["--from", "{csv}"], "--from needs --out-dir"),
        (["pi-1", "--profile", "rpi4", "--out-dir", "{out}"], "go with --from"),
        (["pi-1", "--profile", "rpi4", "--skip-existing"], "go with --from"),
        (["--profile", "rpi4"], "needs a NAME and --profile"),
        (["pi-1"], "needs a NAME and --profile"),
        (["--from", "{tmp}/missing.csv", "--out-dir", "{out}"], "missing.csv does not exist"),
        (["--from", "{tmp}/empty.csv", "--out-dir", "{out}"], "empty.csv is empty"),
        (["--from", "{tmp}/header.csv", "--out-dir", "{out}"], "lists no devices"),
    ],
)
def test_usage_errors(
    cli: Cli, initialised: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    csv_file = fleet_csv(tmp_path / "devices.csv", 2)
    (tmp_path / "empty.csv").write_text("\n\n")
    write_csv(tmp_path / "header.csv", [])
    given = [a.format(csv=csv_file, out=tmp_path / "out", tmp=tmp_path) for a in args]
    result = cli("device", "add", *given)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert registry_devices(initialised / "registry.db") == {}
    assert not (tmp_path / "out").exists()


def _connects(port: int, user: str, password: str | None) -> bool:
    accepted: queue.Queue[bool] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.on_connect = lambda c, u, f, reason, p: accepted.put(not reason.is_failure)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return accepted.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_mosquitto_takes_the_bulk_credentials_from_one_broker_config(
    cli: Cli, initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv(
        "EDGEFLEET_BROKER_URL", f"mqtt://edgefleet-controller:{quote('s3cret')}@127.0.0.1:{port}"
    )
    out = tmp_path / "configs"
    cli.ok("device", "add", "--from", str(fleet_csv(tmp_path / "d.csv", 20)), "--out-dir", str(out))
    written = json.loads(
        cli.ok("broker", "config", "--out", str(tmp_path / "mosquitto.d"), "--json").stdout
    )
    assert written["devices"] == 20
    broker = Broker(tmp_path / "broker", port=port, include_dir=tmp_path / "mosquitto.d").start()
    try:
        configs = {p.stem: load_config(p, env={}) for p in sorted(out.iterdir())}
        for name in ("dev-000", "dev-011", "dev-019"):
            assert _connects(port, name, configs[name].broker_password), name
        # one device's password does not open another's account
        assert not _connects(port, "dev-001", configs["dev-002"].broker_password)
    finally:
        broker.stop()
