"""`rollout ...`, `rollback` and `deploy --reason` against a real home folder and SQLite file:
the CLI's contract (flags, JSON, tables, exit codes, one-line errors); the engine's own
logic is tested in the rollout tests."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from edgefleet.controller import load_settings, open_home
from edgefleet.controller.cli import EXIT_IN_PROGRESS
from edgefleet.controller.registry import GateEvaluation, Rollout

from .conftest import Cli, sqlite_snapshot

PIS = [f"pi-{i:02d}" for i in range(1, 13)]


@pytest.fixture
def fleet(
    cli: Cli,
    initialised: Path,
    model_file: Path,
    model_file_v2: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    monkeypatch.setenv("EDGEFLEET_USER", "alice")
    for name in PIS:
        cli.ok("device", "add", name, "--profile", "rpi4", "-l", "site=lab")
    cli.ok("device", "add", "box-1", "--profile", "x86-edge", "-l", "site=home")
    cli.ok("model", "add", str(model_file), "--name", "digits", "--version", "1.0.0")
    cli.ok("model", "add", str(model_file_v2), "--name", "digits", "--version", "2.0.0")
    return initialised


def _start(cli: Cli, *args: str) -> dict[str, Any]:
    return json.loads(cli.ok("rollout", "start", "digits:2.0.0", *args, "--json").stdout)


def _query(home: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "registry.db") as conn:
        return conn.execute(sql).fetchall()


def _set_state(home: Path, rollout_id: str, state: str) -> None:
    """What the daemon's tick would write when the rollout ends."""
    opened = open_home(load_settings(home))
    try:
        with opened.session(write=True) as session:
            row = session.exec(select(Rollout).where(Rollout.rollout_id == rollout_id)).one()
            row.state = state
            session.add(row)
    finally:
        opened.close()


def _one_line_error(result: Any, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr  # one line, no traceback
    assert result.stdout == ""
    return str(result.stderr)


def test_start_with_defaults_records_waves_and_only_the_first_one_pending(
    cli: Cli, fleet: Path
) -> None:
    detail = _start(cli, "--profile", "rpi4", "--reason", "ticket 1234")
    r = detail["rollout"]
    assert (r["model"], r["state"], r["current_wave"], r["waves"]) == (
        "digits:2.0.0", "running", 0, 4,
    )  # fmt: skip
    assert (r["started_by"], r["note"], r["selector"]) == (
        "alice",
        "ticket 1234",
        {"profile": "rpi4"},
    )
    assert [w["planned"] for w in detail["waves"]] == [1, 1, 4, 6]  # cumulative 1, 10%, 50%, all
    assert [w["state"] for w in detail["waves"]] == ["installing", "waiting", "waiting", "waiting"]
    assert detail["plan"]["gates"] is not None and detail["plan"]["bake"] is not None
    assert detail["plan"]["on_fail"] == "rollback"
    rows = detail["devices"]
    assert {row["device"] for row in rows} == set(PIS)
    assert [(row["wave"], row["state"]) for row in rows if row["state"] == "pending"] == [
        (0, "pending")
    ]
    assert Counter(row["state"] for row in rows) == {"pending": 1, "waiting": 11}

    assert _query(fleet, "SELECT rollout_id, state, started_by, note FROM rollout") == [
        (r["rollout_id"], "running", "alice", "ticket 1234")
    ]
    assert _query(fleet, "SELECT number, planned, state FROM rollout_wave ORDER BY number") == [
        (0, 1, "installing"), (1, 1, "waiting"), (2, 4, "waiting"), (3, 6, "waiting"),
    ]  # fmt: skip
    assert sorted(_query(fleet, "SELECT state, count(*) FROM deployment GROUP BY state")) == [
        ("pending", 1),
        ("waiting", 11),
    ]


def test_start_as_text_names_the_rollout_and_how_to_watch_it(cli: Cli, fleet: Path) -> None:
    out = cli.ok("rollout", "start", "digits:2.0.0", "-l", "site=lab").stdout
    (rollout_id,) = _query(fleet, "SELECT rollout_id FROM rollout")[0]
    assert f"rollout {rollout_id}: digits:2.0.0 to 12 device(s) in 4 wave(s)" in out
    assert f"edgefleet rollout status {rollout_id} --watch" in out


def test_labels_and_profile_combine_like_deploy(cli: Cli, fleet: Path) -> None:
    detail = _start(cli, "-p", "rpi4", "-l", "site=lab", "-l", "site=home")
    assert detail["rollout"]["selector"] == {"profile": "rpi4", "labels": {"site": ["home", "lab"]}}
    assert len(detail["devices"]) == 12  # box-1 is site=home but not rpi4
    status = cli("rollout", "status", detail["rollout"]["rollout_id"]).stdout
    assert "profile rpi4, labels site=home|lab" in status


def test_start_flags_shape_the_stored_plan(cli: Cli, fleet: Path) -> None:
    detail = _start(
        cli, "-d", "pi-01", "-d", "pi-02", "-d", "box-1", "--waves", "1,100%",
        "--min-wave-devices", "2", "--bake", "min_requests=10,min=30s,max=5m",
        "--gate", "quorum=0.9", "--gate", "latency.tolerance=0.2", "--gate", "off=errors",
        "--on-fail", "hold", "--timeout", "30m", "--window", "0 2 * * *",
        "--window-duration", "2h", "--window-tz", "Europe/Berlin",
    )  # fmt: skip
    plan = detail["plan"]
    assert plan["waves"] == ["1", "100%"] and plan["min_wave_devices"] == 2
    assert plan["bake"] == {"min_requests": 10, "min_s": 30.0, "max_s": 300.0, "settle_s": 10.0}
    assert plan["gates"]["quorum"] == 0.9 and plan["gates"]["latency_tolerance"] == 0.2
    assert "errors" not in plan["gates"]["enabled"]
    assert plan["on_fail"] == "hold" and plan["in_progress_timeout_s"] == 1800.0
    assert plan["window"] == {"cron": "0 2 * * *", "duration_s": 7200.0, "tz": "Europe/Berlin"}
    assert [w["planned"] for w in detail["waves"]] == [2, 1]  # at least 2 a wave
    assert json.loads(_query(fleet, "SELECT plan FROM rollout")[0][0]) == plan


def test_no_gates_is_a_staged_deploy_without_bake_or_gates(cli: Cli, fleet: Path) -> None:
    detail = _start(cli, "--profile", "rpi4", "--no-gates", "--waves", "50%,100%")
    assert detail["plan"]["gates"] is None and detail["plan"]["bake"] is None
    assert [w["planned"] for w in detail["waves"]] == [6, 6]
    status = cli("rollout", "status", detail["rollout"]["rollout_id"])
    assert "no gates" in status.stdout and "no gate evaluation" not in status.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--waves", "1,ten%"], "--waves '1,ten%'"),
        (["--waves", "50%,10%"], "cumulative"),
        (["--waves", ""], "--waves"),
        (["--bake", "min_requests=many"], "--bake"),
        (["--bake", "soon=1"], "--bake"),
        (["--bake", "max=forever"], "duration"),
        (["--gate", "quorum=2"], "--gate"),
        (["--gate", "nope=1"], "unknown key 'nope'"),
        (["--gate", "quorum"], "KEY=VALUE"),
        (["--gate", "off=speed"], "--gate"),
        (["--no-gates", "--gate", "quorum=0.9"], "--no-gates cannot be combined"),
        (["--no-gates", "--bake", "min=1m"], "--no-gates cannot be combined"),
        (["--timeout", "soon"], "duration 'soon'"),
        (["--window", "0 2 * * *"], "--window needs --window-duration"),
        (["--window-duration", "2h"], "need --window CRON"),
        (["--window-tz", "Europe/Berlin"], "need --window CRON"),
        (["--window", "not a cron", "--window-duration", "2h"], "maintenance window"),
        (["--window", "0 2 * * *", "--window-duration", "2h", "--window-tz", "Mars/Base"],
         "maintenance window"),
        (["--window", "0 2 * * *", "--window-duration", "later"], "duration"),
    ],
)  # fmt: skip
def test_bad_plan_flags_are_one_line_errors_and_write_nothing(
    cli: Cli, fleet: Path, args: list[str], message: str
) -> None:
    before = sqlite_snapshot(fleet / "registry.db")
    result = cli("rollout", "start", "digits:2.0.0", "--profile", "rpi4", *args)
    assert message in _one_line_error(result, 2)
    assert sqlite_snapshot(fleet / "registry.db") == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["digits:9.9.9", "--profile", "rpi4"], "unknown model digits:9.9.9"),
        (["digits:2.0.0", "--profile", "nope"], "unknown profile 'nope'"),
        (["digits:2.0.0", "--device", "ghost"], "ghost"),
        (["digits:2.0.0"], "exactly one of"),
    ],
)
def test_bad_targets_are_one_line_errors_and_write_nothing(
    cli: Cli, fleet: Path, args: list[str], message: str
) -> None:
    before = sqlite_snapshot(fleet / "registry.db")
    assert message in _one_line_error(cli("rollout", "start", *args), 2)
    assert sqlite_snapshot(fleet / "registry.db") == before


def test_deploy_is_a_one_wave_rollout_recording_who_and_why(cli: Cli, fleet: Path) -> None:
    rows = json.loads(
        cli.ok("deploy", "digits:1.0.0", "-d", "box-1", "--reason", "hotfix", "--json").stdout
    )
    listed = json.loads(cli.ok("rollout", "list", "--json").stdout)
    assert [(r["rollout_id"], r["waves"], r["started_by"], r["note"]) for r in listed] == [
        (rows[0]["deployment_id"], 1, "alice", "hotfix")
    ]


def test_list_and_status_in_json_and_as_tables(
    cli: Cli, fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _start(cli, "--profile", "rpi4", "--reason", "[bold]see[/] #12")["rollout"][
        "rollout_id"
    ]
    second = json.loads(cli.ok("deploy", "digits:1.0.0", "-d", "box-1", "--json").stdout)
    second_id = second[0]["deployment_id"]
    listed = json.loads(cli.ok("rollout", "list", "--json").stdout)
    assert [r["rollout_id"] for r in listed] == [second_id, first]  # newest first
    assert listed[1]["counts"] == {"pending": 1, "waiting": 11}
    assert [
        r["rollout_id"]
        for r in json.loads(cli.ok("rollout", "list", "--limit", "1", "--json").stdout)
    ] == [second_id]
    _set_state(fleet, second_id, "completed")
    active = json.loads(cli.ok("rollout", "list", "--active", "--json").stdout)
    assert [r["rollout_id"] for r in active] == [first]

    monkeypatch.setenv("COLUMNS", "80")
    table = cli.ok("rollout", "list").stdout
    assert first in table and second_id in table and "0/12" in table and "1/4" in table
    status = cli("rollout", "status", first)
    assert status.exit_code == EXIT_IN_PROGRESS
    for expected in (first, "digits:2.0.0 → profile rpi4", "pending 1, waiting 11", "by alice",
                     "installing", "100%", "no gate evaluation yet for wave 1",
                     "[bold]see[/] #12"):  # fmt: skip
        assert expected in status.stdout, expected
    assert max(len(line.rstrip()) for line in (table + status.stdout).splitlines()) <= 80

    as_json = cli("rollout", "status", first, "--json")
    assert as_json.exit_code == EXIT_IN_PROGRESS
    shown = json.loads(as_json.stdout)
    assert shown["rollout"]["rollout_id"] == first and shown["gates"] == []
    assert len(shown["waves"]) == 4 and len(shown["devices"]) == 12


def _record_evaluations(home: Path, rollout_id: str) -> None:
    """What the daemon's tick would store while wave 0 bakes: latency judged twice."""
    t0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    opened = open_home(load_settings(home))
    try:
        with opened.session(write=True) as session:
            rid = session.exec(select(Rollout).where(Rollout.rollout_id == rollout_id)).one().id
            assert rid is not None
            for i, (gate, decision, stat, limit, detail) in enumerate([
                ("install", "pass", 1.0, 0.8, "1 of 1 committed"),
                ("latency", "inconclusive", None, 0.3, "12 requests, need 100 a device"),
                ("latency", "fail", 0.52, 0.3, "p95 rose 52% over the devices' own baseline "
                 "(one-sided Mann-Whitney on merged histograms, p=0.001 < alpha 0.01); " * 2),
            ]):  # fmt: skip
                session.add(
                    GateEvaluation(
                        rollout_id=rid, wave=0, gate=gate, decision=decision, statistic=stat,
                        threshold=limit, detail=detail, inputs={"n": i},
                        at=t0 + timedelta(seconds=5 * i),
                    )
                )  # fmt: skip
    finally:
        opened.close()


def test_status_shows_each_gates_latest_figure_and_analysis_shows_them_all(
    cli: Cli, fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout_id = _start(cli, "--profile", "rpi4")["rollout"]["rollout_id"]
    assert json.loads(cli.ok("rollout", "analysis", rollout_id, "--json").stdout) == []
    assert "no gate evaluation yet" in cli.ok("rollout", "analysis", rollout_id).stdout
    _record_evaluations(fleet, rollout_id)

    shown = json.loads(cli("rollout", "status", rollout_id, "--json").stdout)
    assert [(g["gate"], g["decision"], g["statistic"]) for g in shown["gates"]] == [
        ("install", "pass", 1.0),
        ("latency", "fail", 0.52),
    ]
    every = json.loads(cli.ok("rollout", "analysis", rollout_id, "--json").stdout)
    assert [(e["wave"], e["gate"], e["decision"]) for e in every] == [
        (0, "install", "pass"), (0, "latency", "inconclusive"), (0, "latency", "fail"),
    ]  # fmt: skip
    assert every[2]["inputs"] == {"n": 2} and every[2]["threshold"] == 0.3
    first_wave = cli.ok("rollout", "analysis", rollout_id, "--wave", "1", "--json").stdout
    assert json.loads(first_wave) == every  # waves are numbered from 1 on the command line
    assert (
        json.loads(cli.ok("rollout", "analysis", rollout_id, "--wave", "2", "--json").stdout) == []
    )

    monkeypatch.setenv("COLUMNS", "80")
    status = cli("rollout", "status", rollout_id).stdout
    assert "gates, wave 1" in status and "0.52" in status and "inconclusive" not in status
    table = cli.ok("rollout", "analysis", rollout_id).stdout
    assert "01-02 03:04:15" in table and "0.52 / 0.3" in table and "- / 0.3" in table
    assert "Mann-Whitney" in table
    assert max(len(line.rstrip()) for line in (status + table).splitlines()) <= 80


def test_pause_resume_promote_abort_and_a_conflict(cli: Cli, fleet: Path) -> None:
    rollout_id = _start(cli, "--profile", "rpi4")["rollout"]["rollout_id"]

    def act(*args: str) -> dict[str, Any]:
        return json.loads(cli.ok("rollout", *args, "--json").stdout)

    paused = act("pause", rollout_id, "--reason", "lunch")
    assert paused["state"] == "paused" and "alice" in paused["reason"]
    assert "lunch" in paused["reason"]
    assert act("resume", rollout_id)["state"] == "running"
    promoted = act("promote", rollout_id)
    assert (promoted["state"], promoted["current_wave"]) == ("running", 1)
    out = cli.ok("rollout", "abort", rollout_id, "--reason", "wrong answers").stdout
    assert out.startswith(f"rollout {rollout_id}: rolling_back")
    assert "wrong answers" in out
    assert _query(fleet, "SELECT state FROM rollout") == [("rolling_back",)]

    before = sqlite_snapshot(fleet / "registry.db")
    error = _one_line_error(cli("rollout", "resume", rollout_id), 1)
    assert "rolling_back" in error
    assert sqlite_snapshot(fleet / "registry.db") == before


def test_promote_full_sends_every_remaining_device(cli: Cli, fleet: Path) -> None:
    rollout_id = _start(cli, "--profile", "rpi4")["rollout"]["rollout_id"]
    cli.ok("rollout", "promote", rollout_id, "--full")
    assert _query(fleet, "SELECT state, count(*) FROM deployment GROUP BY state") == [
        ("pending", 12)
    ]


@pytest.mark.parametrize(
    ("state", "code"),
    [("running", EXIT_IN_PROGRESS), ("paused", EXIT_IN_PROGRESS),
     ("rolling_back", EXIT_IN_PROGRESS), ("completed", 0), ("aborted", 1)],
)  # fmt: skip
def test_status_exit_code_says_where_the_rollout_is(
    cli: Cli, fleet: Path, state: str, code: int
) -> None:
    rollout_id = _start(cli, "--profile", "rpi4")["rollout"]["rollout_id"]
    _set_state(fleet, rollout_id, state)
    assert cli("rollout", "status", rollout_id).exit_code == code
    assert cli("rollout", "status", rollout_id, "--json").exit_code == code


@pytest.mark.parametrize("as_json", [True, False])
def test_status_watch_shows_each_change_until_the_rollout_ends(
    cli: Cli, fleet: Path, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    rollout_id = _start(cli, "--profile", "rpi4")["rollout"]["rollout_id"]
    naps: list[float] = []

    def nap(seconds: float) -> None:  # the daemon finishes the rollout while we wait
        naps.append(seconds)
        _set_state(fleet, rollout_id, "completed" if len(naps) == 2 else "running")

    monkeypatch.setattr("edgefleet.controller.cli._rollout.time.sleep", nap)
    args = ["rollout", "status", rollout_id, "--watch", "--interval", "0.5"]
    result = cli(*args, *(["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    assert naps == [0.5, 0.5]
    if as_json:  # one object a line, only when something changed
        seen = [json.loads(line)["rollout"]["state"] for line in result.stdout.splitlines()]
        assert seen == ["running", "completed"]
    else:
        assert result.stdout.count(f"rollout  {rollout_id}") == 2
        assert "state    completed" in result.stdout


def test_unknown_rollout_is_a_one_line_usage_error(cli: Cli, fleet: Path) -> None:
    for command in ("status", "pause", "resume", "promote", "abort", "analysis"):
        assert "unknown rollout 'nope'" in _one_line_error(cli("rollout", command, "nope"), 2)


def test_rollback_without_a_known_previous_model_is_refused(cli: Cli, fleet: Path) -> None:
    cli.ok("deploy", "digits:1.0.0", "-d", "pi-01")  # sent, but never reported serving
    before = sqlite_snapshot(fleet / "registry.db")
    error = _one_line_error(cli("rollback", "-d", "pi-01", "--reason", "oops"), 2)
    assert "pi-01 has no previous model" in error
    assert "exactly one of" in _one_line_error(cli("rollback"), 2)
    assert "unknown device" in _one_line_error(cli("rollback", "-d", "ghost"), 2)
    assert sqlite_snapshot(fleet / "registry.db") == before


@pytest.mark.parametrize(
    "command",
    ["start", "list", "status", "analysis", "pause", "resume", "promote", "abort"],
)
def test_every_rollout_command_has_help(cli: Cli, command: str) -> None:
    result = cli("rollout", command, "--help")
    assert result.exit_code == 0 and "Usage" in result.stdout
    assert cli("rollback", "--help").exit_code == 0
