"""`events` as an operator relies on it: who started the rollout an event belongs to and
why, lines that never wrap (also with --follow), CSV and JSON; against a real home folder."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from edgefleet.controller import Device, Event

from .conftest import Cli
from .fleet_evidence import enrol_lab, opened


@pytest.fixture
def lab(cli: Cli, initialised: Path, model_file: Path, model_file_v2: Path) -> Path:
    enrol_lab(cli, model_file, model_file_v2)
    return initialised


def _two_events(cli: Cli, lab: Path) -> str:
    """alice's canary deploy to pi-a, loading 3 min ago; a hand rollback's failure now."""
    (row,) = json.loads(
        cli.ok(
            "deploy", "digits:1.0.0", "-d", "pi-a", "--reason", "canary for the lab", "--json"
        ).stdout
    )
    with opened(lab) as home, home.session(write=True) as session:
        pi_a = session.exec(select(Device).where(Device.name == "pi-a")).one()
        now = datetime.now(UTC)
        session.add(Event(device_id=pi_a.id, deployment_id=row["deployment_id"], state="loading",
                          at=now - timedelta(minutes=3)))  # fmt: skip
        session.add(Event(device_id=pi_a.id, deployment_id="rb-by-hand", state="failed",
                          ok=False, error_code="E_LOAD", message="x" * 200, at=now))  # fmt: skip
    return str(row["deployment_id"])


def test_events_say_who_started_the_rollout_and_why(
    cli: Cli, lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_USER", "alice")
    dep_id = _two_events(cli, lab)
    events = json.loads(cli.ok("events", "--json").stdout)
    assert [(e["state"], e["started_by"], e["note"]) for e in events] == [
        ("loading", "alice", "canary for the lab"),
        ("failed", None, None),
    ]
    lines = cli.ok("events").stdout.splitlines()
    assert all(len(line) <= 80 for line in lines) and len(lines) == 3
    assert re.match(r"\s*3m\s+pi-a\s+dep-.*\s+loading\s+alice\s+why: canary for the lab$", lines[1])
    assert "E_LOAD: xxx" in lines[2] and lines[2].endswith("…")
    wide = cli.ok("events", "--wide").stdout
    assert dep_id in wide and "x" * 200 in wide
    records = list(csv.DictReader(io.StringIO(cli.ok("events", "--csv").stdout)))
    assert [(r["state"], r["started_by"], r["error_code"]) for r in records] == [
        ("loading", "alice", ""),
        ("failed", "", "E_LOAD"),
    ]


def test_following_prints_lines_within_80_columns_until_ctrl_c(
    cli: Cli, lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_USER", "alice")
    dep_id = _two_events(cli, lab)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # a pipe: 80 columns
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.controller", "events", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(3)]  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and rest == ""
    assert lines[0].split() == ["time", "device", "deployment", "state", "detail"]
    assert all(len(line) <= 80 for line in lines), lines
    assert re.match(r"\d\d:\d\d:\d\dZ\s+pi-a\s+dep-\S+\s+loading\s+why: canary", lines[1])
    assert dep_id[-6:] in lines[1] and lines[2].endswith("…")
