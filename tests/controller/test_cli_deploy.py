"""`deploy`, `status` and `events` against a real home folder and SQLite file."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from edgefleet.controller import Deployment, Device, Event, Telemetry, load_settings, open_home

from .conftest import Cli, sqlite_snapshot


@pytest.fixture
def fleet(cli: Cli, initialised: Path, model_file: Path) -> Path:
    cli.ok("device", "add", "pi-1", "--profile", "rpi4", "-l", "site=lab")
    cli.ok("device", "add", "pi-2", "--profile", "rpi4", "-l", "site=home")
    cli.ok("device", "add", "box-1", "--profile", "x86-edge", "-l", "site=lab")
    cli.ok("model", "add", str(model_file), "--name", "digits", "--version", "1.0.0")
    return initialised


def _deployments(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "registry.db") as conn:
        return sorted(
            conn.execute(
                "SELECT device.name, deployment.state FROM deployment "
                "JOIN device ON device.id = deployment.device_id"
            ).fetchall()
        )


def test_deploy_to_a_profile_records_one_pending_row_per_matching_device(
    cli: Cli, fleet: Path
) -> None:
    rows = json.loads(cli.ok("deploy", "digits:1.0.0", "--profile", "rpi4", "--json").stdout)
    assert [r["device"] for r in rows] == ["pi-1", "pi-2"]
    assert len({r["deployment_id"] for r in rows}) == 1
    assert all(r["model"] == "digits:1.0.0/fp32" for r in rows)
    assert _deployments(fleet) == [("pi-1", "pending"), ("pi-2", "pending")]


def test_deploy_by_device_and_by_label(cli: Cli, fleet: Path) -> None:
    out = cli.ok("deploy", "digits:1.0.0", "--device", "box-1", "--device", "pi-2").stdout
    assert "2 device(s)" in out and out.count("pending") == 2
    assert _deployments(fleet) == [("box-1", "pending"), ("pi-2", "pending")]
    cli.ok("deploy", "digits:1.0.0", "--label", "site=lab")
    # the newer deployment supersedes box-1's unsent one
    assert _deployments(fleet) == [
        ("box-1", "pending"),
        ("box-1", "superseded"),
        ("pi-1", "pending"),
        ("pi-2", "pending"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["digits:1.0.0", "--device", "nope"], "unknown device(s): nope"),
        (["digits:1.0.0", "--device", "pi-1", "--device", "ghost"], "ghost"),
        (["digits:1.0.0", "--profile", "nope"], "unknown profile 'nope'"),
        (["digits:1.0.0", "--profile", "rpi5"], "no device matches profile 'rpi5'"),
        (["digits:1.0.0", "--label", "site=mars"], "no device matches labels site=mars"),
        (["digits:1.0.0", "--label", "oops"], "malformed label"),
        (["digits:9.9.9", "--profile", "rpi4"], "unknown model digits:9.9.9"),
        (["digits", "--profile", "rpi4"], "NAME:VERSION"),
        (["digits:1.0.0"], "exactly one of"),
        (["digits:1.0.0", "--profile", "rpi4", "--device", "pi-1"], "exactly one of"),
    ],
)
def test_bad_deploy_is_refused_and_writes_nothing(
    cli: Cli, fleet: Path, args: list[str], message: str
) -> None:
    before = sqlite_snapshot(fleet / "registry.db")
    result = cli("deploy", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ")
    assert sqlite_snapshot(fleet / "registry.db") == before


def test_status_and_events_read_what_the_registry_holds(cli: Cli, fleet: Path) -> None:
    empty = json.loads(cli.ok("status", "--json").stdout)
    assert [(d["device"], d["online"], d["model"], d["state"]) for d in empty] == [
        ("box-1", False, None, None),
        ("pi-1", False, None, None),
        ("pi-2", False, None, None),
    ]
    dep = json.loads(cli.ok("deploy", "digits:1.0.0", "--device", "pi-1", "--json").stdout)
    dep_id = dep[0]["deployment_id"]
    now = datetime.now(UTC)
    home = open_home(load_settings(fleet))
    try:  # what the daemon would write on hearing from pi-1
        with home.session() as session:
            pi1 = session.exec(select(Device).where(Device.name == "pi-1")).one()
            pi1.online, pi1.last_seen = True, now
            session.add(Event(device_id=pi1.id, deployment_id=dep_id, state="committed", at=now))
            session.add(Telemetry(device_id=pi1.id, at=now, p95_ms=1.25, requests=3))
            for row in session.exec(select(Deployment).where(Deployment.device_id == pi1.id)):
                row.state = "committed"
    finally:
        home.close()
    rows = {d["device"]: d for d in json.loads(cli.ok("status", "--json").stdout)}
    assert rows["pi-1"]["online"] is True
    assert rows["pi-1"]["model"] == "digits:1.0.0"
    assert rows["pi-1"]["state"] == "committed"
    assert rows["pi-1"]["p95_ms"] == 1.25
    assert rows["pi-1"]["last_seen"] is not None
    assert rows["pi-2"]["model"] is None
    table = cli.ok("status").stdout
    assert "1.25" in table and "pi-1" in table

    events = json.loads(cli.ok("events", "--device", "pi-1", "--json").stdout)
    assert [(e["device"], e["deployment_id"], e["state"]) for e in events] == [
        ("pi-1", dep_id, "committed")
    ]
    assert json.loads(cli.ok("events", "--device", "pi-2", "--json").stdout) == []
    assert "committed" in cli.ok("events").stdout
    bad = cli("events", "--device", "nope")
    assert bad.exit_code == 2 and "unknown device 'nope'" in bad.stderr


def test_deploy_wait_without_a_daemon_times_out_with_a_failure_exit(cli: Cli, fleet: Path) -> None:
    result = cli("deploy", "digits:1.0.0", "--device", "pi-1", "--wait", "--timeout", "0")
    assert result.exit_code == 1
    assert "pi-1: pending" in result.stderr
    assert "not every target committed" in result.stderr
    assert _deployments(fleet) == [("pi-1", "pending")]
