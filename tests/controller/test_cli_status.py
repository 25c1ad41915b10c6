"""`status` as an operator relies on it: online from fresh evidence, desired vs serving,
filters, lines that never wrap, CSV and JSON for machines, --watch; against a real home
folder and SQLite file (the library's parts also on PostgreSQL when configured)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from edgefleet.controller import Deployment, Device, Event, Home, Telemetry
from edgefleet.controller import deploy as record_deployment
from edgefleet.controller.catalog import add_model
from edgefleet.controller.fleet import add_device, fleet_status
from edgefleet.controller.registry import DeviceCreate

from .conftest import Cli
from .fleet_evidence import beat, enrol_lab, opened, say, set_rows

LONG = "a-very-long-device-name-for-the-north-warehouse-rack-seventeen-b"  # 64, the maximum
JSON_FIELDS = [
    "device", "online", "profile", "model", "state", "p95_ms", "last_seen", "online_state",
    "reported_online", "age_s", "labels", "desired", "deployment_id", "serving",
    "serving_deployment_id", "agent_version", "attention",
]  # fmt: skip


@pytest.fixture
def lab(cli: Cli, initialised: Path, model_file: Path, model_file_v2: Path) -> Path:
    enrol_lab(cli, model_file, model_file_v2)
    return initialised


@pytest.fixture
def running(cli: Cli, lab: Path) -> dict[str, str]:
    """pi-a serves digits 1.0.0 and is on its way to 2.0.0, box-1 serves 1.0.0 and went
    away (its last will), pi-b was never heard from; a daemon is beating. Deployment ids."""
    first = json.loads(cli.ok("deploy", "digits:1.0.0", "-l", "site=lab", "--json").stdout)
    dep1 = first[0]["deployment_id"]
    with opened(lab) as home:
        set_rows(home, "pi-a", "committed")
        set_rows(home, "box-1", "committed")
        say(home, "pi-a", True, ("digits:1.0.0/fp32", dep1))
        say(home, "box-1", True, ("digits:1.0.0/fp32", dep1))
        say(home, "box-1", False)
        with home.session(write=True) as session:
            pi_a = session.exec(select(Device).where(Device.name == "pi-a")).one()
            session.add(Telemetry(device_id=pi_a.id, at=datetime.now(UTC), p95_ms=1.25))
            pi_a.p95_ms, pi_a.p95_at = 1.25, datetime.now(UTC)  # as ingest keeps it
            session.add(pi_a)
        beat(home)
    second = json.loads(cli.ok("deploy", "digits:2.0.0", "-d", "pi-a", "--json").stdout)
    return {"first": dep1, "second": second[0]["deployment_id"]}


def status_json(cli: Cli, *args: str) -> dict[str, dict[str, object]]:
    return {d["device"]: d for d in json.loads(cli.ok("status", "--json", *args).stdout)}


# -- what the registry holds, and how far it can be trusted ----------------------------


def test_status_and_events_read_what_the_registry_holds(cli: Cli, lab: Path) -> None:
    empty = json.loads(cli.ok("status", "--json").stdout)
    assert [(d["device"], d["online"], d["model"], d["state"]) for d in empty] == [
        ("box-1", False, None, None),
        ("pi-a", False, None, None),
        ("pi-b", False, None, None),
    ]
    dep = json.loads(cli.ok("deploy", "digits:1.0.0", "--device", "pi-a", "--json").stdout)
    dep_id = dep[0]["deployment_id"]
    now = datetime.now(UTC)
    with opened(lab) as home:  # what the daemon would write on hearing from pi-a
        beat(home)
        with home.session(write=True) as session:
            pi_a = session.exec(select(Device).where(Device.name == "pi-a")).one()
            pi_a.online, pi_a.last_seen = True, now
            session.add(Event(device_id=pi_a.id, deployment_id=dep_id, state="committed", at=now))
            session.add(Telemetry(device_id=pi_a.id, at=now, p95_ms=1.25, requests=3))
            pi_a.p95_ms, pi_a.p95_at = 1.25, now  # as ingest keeps it
        set_rows(home, "pi-a", "committed")
    rows = status_json(cli)
    assert rows["pi-a"]["online"] is True and rows["pi-a"]["online_state"] == "online"
    assert rows["pi-a"]["model"] == "digits:1.0.0"
    assert rows["pi-a"]["state"] == "committed"
    assert rows["pi-a"]["p95_ms"] == 1.25
    assert rows["pi-a"]["last_seen"] is not None
    assert rows["pi-b"]["model"] is None
    table = cli.ok("status").stdout
    assert "1.25" in table and "pi-a" in table

    events = json.loads(cli.ok("events", "--device", "pi-a", "--json").stdout)
    assert [(e["device"], e["deployment_id"], e["state"]) for e in events] == [
        ("pi-a", dep_id, "committed")
    ]
    assert json.loads(cli.ok("events", "--device", "pi-b", "--json").stdout) == []
    assert "committed" in cli.ok("events").stdout
    bad = cli("events", "--device", "nope")
    assert bad.exit_code == 2 and "unknown device 'nope'" in bad.stderr


@pytest.mark.parametrize(
    ("case", "reported", "seen_s", "daemon", "expected"),
    [
        ("said online, heard 10 s ago, daemon beating", True, 10, "fresh", "online"),
        ("its last will", False, 10, "fresh", "offline"),
        ("never heard from", False, None, "fresh", "offline"),
        ("said online, silent for 10 min", True, 600, "fresh", "stale"),
        ("no daemon ever ran", True, 10, None, "stale"),
        ("the daemon stopped", True, 10, "stopped", "stale"),
        ("the daemon missed its beats", True, 10, "old", "stale"),
        ("the daemon lost the broker", True, 10, "no broker", "stale"),
        ("its last will, no daemon since", False, 10, None, "offline"),
    ],
)
def test_online_needs_fresh_evidence_and_a_live_daemon(
    home: Home, case: str, reported: bool, seen_s: float | None, daemon: str | None, expected: str
) -> None:
    add_device(home, DeviceCreate(name="pi-a", profile="rpi4"))
    now = datetime.now(UTC)
    with home.session(write=True) as session:
        device = session.exec(select(Device)).one()
        device.online = reported
        device.last_seen = None if seen_s is None else now - timedelta(seconds=seen_s)
    if daemon is not None:
        beat(
            home, age_s=60 if daemon == "old" else 1, stopped=daemon == "stopped",
            broker=daemon != "no broker",
        )  # fmt: skip
    (status,) = fleet_status(home, now=now)
    assert status.online_state == expected, case
    assert status.online is (expected == "online")
    assert status.reported_online is reported
    assert status.age_s == (None if seen_s is None else pytest.approx(seen_s))


def test_desired_is_the_newest_live_row_serving_what_the_device_says(
    home: Home, model_file: Path, model_file_v2: Path
) -> None:
    add_device(home, DeviceCreate(name="pi-a", profile="rpi4"))
    add_model(home, model_file, name="digits", version="1.0.0")
    add_model(home, model_file_v2, name="digits", version="2.0.0")
    dep1 = record_deployment(home, "digits:1.0.0", devices=["pi-a"])[0].deployment_id
    set_rows(home, "pi-a", "committed")
    say(home, "pi-a", True, ("digits:1.0.0/fp32", dep1))
    dep2 = record_deployment(home, "digits:2.0.0", devices=["pi-a"])[0].deployment_id

    def look() -> tuple[object, ...]:
        (s,) = fleet_status(home)
        return s.desired, s.deployment_id, s.state, s.serving, s.serving_deployment_id, s.model

    on_its_way = ("digits:2.0.0/fp32", dep2, "pending", "digits:1.0.0/fp32", dep1)
    assert look() == (*on_its_way, "digits:1.0.0")
    with home.session(write=True) as session:  # a newer row, cancelled: it orders nothing
        first = session.exec(select(Deployment).where(Deployment.deployment_id == dep1)).one()
        session.add(Deployment(deployment_id="dep-x", device_id=first.device_id,
                               variant_id=first.variant_id, state="cancelled"))  # fmt: skip
    assert look() == (*on_its_way, "digits:1.0.0")
    with home.session(write=True) as session:  # sent back: the rollback row's variant
        back = Deployment(deployment_id="rb-1", device_id=first.device_id,
                          variant_id=first.variant_id, kind="rollback", undoes=dep2)  # fmt: skip
        session.add(back)
    assert look()[:3] == ("digits:1.0.0/fp32", "rb-1", "pending")


def test_status_costs_the_same_queries_for_3_and_30_devices(home: Home, model_file: Path) -> None:
    add_model(home, model_file, name="digits", version="1.0.0")

    def statements() -> int:
        seen: list[str] = []
        listen = lambda *args: seen.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
        sa.event.listen(home.engine, "before_cursor_execute", listen)
        try:
            fleet_status(home)
        finally:
            sa.event.remove(home.engine, "before_cursor_execute", listen)
        return len(seen)

    for i in range(3):
        add_device(home, DeviceCreate(name=f"pi-{i}", profile="rpi4"))
    record_deployment(home, "digits:1.0.0", profile="rpi4")
    few = statements()
    for i in range(3, 30):
        add_device(home, DeviceCreate(name=f"pi-{i}", profile="rpi4"))
    record_deployment(home, "digits:1.0.0", profile="rpi4")
    assert statements() == few <= 6


# -- filters ---------------------------------------------------------------------------


FILTERS = [  # arguments, the devices shown (see the `running` fixture)
    ([], ["box-1", "pi-a", "pi-b"]),
    (["--profile", "rpi4"], ["pi-a", "pi-b"]),
    (["--label", "site=lab"], ["box-1", "pi-a"]),
    (["-l", "site=lab", "-p", "rpi4"], ["pi-a"]),
    (["-l", "site=lab", "-l", "site=home"], ["box-1", "pi-a", "pi-b"]),
    (["--state", "online"], ["pi-a"]),
    (["--state", "offline"], ["box-1", "pi-b"]),
    (["--state", "stale"], []),
    (["--state", "pending"], ["pi-a"]),
    (["--state", "committed"], ["box-1"]),
    (["--model", "digits"], ["box-1", "pi-a"]),
    (["--model", "digits:2.0.0"], ["pi-a"]),
    (["--model", "digits:1.0.0", "--state", "offline"], ["box-1"]),
]


def test_filters(cli: Cli, running: dict[str, str]) -> None:
    for args, devices in FILTERS:  # one fleet for every case: building it is the slow part
        assert sorted(status_json(cli, *args)) == devices, args
        lines = cli.ok("status", *args).stdout.splitlines()[1:]
        assert [line.split()[0] for line in lines] == devices, args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "rpi9"], "unknown profile 'rpi9'"),
        (["--state", "sleepy"], "unknown state 'sleepy'"),
        (["--model", "nope"], "unknown model nope"),
        (["--model", "digits:9.9.9"], "unknown model digits:9.9.9"),
        (["--label", "oops"], "malformed label"),
        (["--json", "--csv"], "choose one of --json and --csv"),
        (["--watch", "--csv"], "not CSV"),
    ],
)
def test_bad_filters_are_usage_errors(cli: Cli, lab: Path, args: list[str], message: str) -> None:
    result = cli("status", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr


# -- output: never wrapped, one device a line; CSV and JSON ----------------------------


def test_desired_vs_serving_and_the_daemon_line(cli: Cli, running: dict[str, str]) -> None:
    rows = status_json(cli)
    assert list(rows["pi-a"]) == JSON_FIELDS  # the JSON's shape is a contract
    pi_a = rows["pi-a"]
    assert (pi_a["desired"], pi_a["serving"]) == ("digits:2.0.0/fp32", "digits:1.0.0/fp32")
    assert (pi_a["deployment_id"], pi_a["state"]) == (running["second"], "pending")
    assert rows["box-1"]["online_state"] == "offline" and rows["pi-b"]["age_s"] is None
    assert cli.ok("status").stderr == ""  # the daemon is beating: nothing to warn of
    with opened(Path(os.environ["EDGEFLEET_HOME"])) as home:
        beat(home, stopped=True)
    result = cli.ok("status")
    assert "serve on ctl:42 stopped" in result.stderr and "online states are stale" in result.stderr
    assert status_json(cli)["pi-a"]["online_state"] == "stale"


def _fleet_of_long_names(cli: Cli, lab: Path) -> None:
    cli.ok("device", "add", LONG, "--profile", "rpi4")
    with opened(lab) as home:
        beat(home)
        model = "a-model-whose-name-is-long-enough-to-hurt:10.20.30-rc.1/int8-per-channel"
        say(home, LONG, True, (model, "dep-20240501120000-abcdef"))
        say(home, "pi-a", True)


@pytest.mark.parametrize("columns", ["80", None])
def test_the_table_fits_80_columns_one_device_a_line(
    cli: Cli, lab: Path, monkeypatch: pytest.MonkeyPatch, columns: str | None
) -> None:
    _fleet_of_long_names(cli, lab)
    if columns is None:  # CliRunner's stdout is no terminal: a pipe's 80
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    for args in (["status"], ["deploy", "digits:1.0.0", "-p", "rpi4"], ["events"]):
        lines = cli.ok(*args).stdout.splitlines()
        assert lines and all(len(line) <= 80 for line in lines), lines
    lines = cli.ok("status").stdout.splitlines()
    assert len(lines) == 1 + 4  # a header, then one line per device
    (long_line,) = [line for line in lines if line.startswith(LONG[:20])]
    assert "online" in long_line and "…" in long_line
    (pi_a,) = [line for line in lines if "pi-a" in line]  # `status | grep pi-a`
    assert re.search(r"pi-a\s+online\s+\d+s\s+-\s+pending\s+-$", pi_a), pi_a
    wide = cli.ok("status", "--wide").stdout
    assert LONG in wide and "int8-per-channel" in wide and "digits:1.0.0/fp32" in wide
    assert re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+$", wide.splitlines()[1])


def test_piped_through_cat_without_columns_lines_stay_within_80(
    cli: Cli, lab: Path, tmp_path: Path
) -> None:
    _fleet_of_long_names(cli, lab)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    for command in ("status", "events"):
        out = subprocess.run(
            f"'{sys.executable}' -m edgefleet.controller {command} | cat",
            shell=True, env=env, capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        assert out.strip() and all(len(line) <= 80 for line in out.splitlines()), out


def test_csv_parses_with_one_record_per_device(cli: Cli, running: dict[str, str]) -> None:
    records = list(csv.DictReader(io.StringIO(cli.ok("status", "--csv").stdout)))
    assert [r["device"] for r in records] == ["box-1", "pi-a", "pi-b"]
    assert list(records[0]) == [
        "device", "online_state", "online", "reported_online", "age_s", "last_seen", "profile",
        "labels", "serving", "desired", "deployment_id", "serving_deployment_id", "state",
        "model", "p95_ms", "agent_version", "attention",
    ]  # fmt: skip
    pi_a = records[1]
    assert (pi_a["online_state"], pi_a["labels"], pi_a["p95_ms"]) == ("online", "site=lab", "1.25")
    assert pi_a["deployment_id"] == running["second"]
    assert datetime.fromisoformat(pi_a["last_seen"]).tzinfo is not None
    assert records[2]["last_seen"] == "" and records[2]["age_s"] == ""


def test_watch_shows_a_frame_per_look_until_its_count(cli: Cli, running: dict[str, str]) -> None:
    out = cli.ok("status", "--watch", "--count", "2", "--interval", "0.1").stdout
    assert out.count("3 device(s), 1 online") == 2
    assert all(len(line) <= 80 for line in out.splitlines())
    lines = cli.ok("status", "-w", "--json", "--count", "2", "--interval", "0.1").stdout
    frames = [json.loads(line) for line in lines.splitlines()]
    assert [[d["device"] for d in frame] for frame in frames] == [["box-1", "pi-a", "pi-b"]] * 2
