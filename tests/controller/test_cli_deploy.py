"""`deploy` against a real home folder and SQLite file: the rows it records, what it warns
of, and --wait (`status` and `events` are in test_cli_status and test_cli_events)."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgefleet.controller import wait_for_deployment

from .conftest import Cli, sqlite_snapshot
from .fleet_evidence import beat, opened, say


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


def _serve_beating(home_dir: Path, *online: str) -> None:
    """A daemon beating, and ``online`` devices' retained status heard just now."""
    with opened(home_dir) as home:
        beat(home)
        for name in online:
            say(home, name, True)


def _play_daemon(home_dir: Path, state: str, *, after_s: float = 0.3) -> threading.Thread:
    """In the background, once a deployment is recorded: every row reaches ``state``."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(after_s)
            with sqlite3.connect(home_dir / "registry.db", timeout=10) as conn:
                if conn.execute("UPDATE deployment SET state = ?", (state,)).rowcount:
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_deploy_with_no_daemon_says_nothing_is_sent_and_names_offline_targets(
    cli: Cli, fleet: Path
) -> None:
    _serve_beating(fleet, "pi-1")
    with opened(fleet) as home:  # the daemon stopped: pi-1's "online" is stale, pi-2 was
        beat(home, stopped=True)  # never heard from
    result = cli.ok("deploy", "digits:1.0.0", "--profile", "rpi4")
    assert result.stdout.startswith("deployment dep-")
    warnings = result.stderr.splitlines()
    assert warnings[0].startswith("warning: serve on ctl:42 stopped")
    assert warnings[0].endswith("nothing is sent until `edgefleet serve` runs")
    # pi-1 may be back or not: only the device known to be away is named
    assert warnings[1] == (
        "warning: 1 of 2 target(s) offline, queued until they return: pi-2 (offline, never seen)"
    )
    assert _deployments(fleet) == [("pi-1", "pending"), ("pi-2", "pending")]


def test_deploy_with_a_live_daemon_names_only_the_offline_targets(cli: Cli, fleet: Path) -> None:
    _serve_beating(fleet, "pi-1")
    assert cli.ok("deploy", "digits:1.0.0", "-d", "pi-1").stderr == ""
    stderr = cli.ok("deploy", "digits:1.0.0", "--label", "site=lab").stderr
    assert stderr == (
        "warning: 1 of 2 target(s) offline, queued until they return: box-1 (offline, never seen)\n"
    )


@pytest.mark.parametrize(("state", "code"), [("committed", 0), ("failed", 1)])
def test_deploy_wait_prints_the_id_first_and_returns_once_every_target_finished(
    cli: Cli, fleet: Path, state: str, code: int
) -> None:
    _serve_beating(fleet, "pi-1", "pi-2")
    thread = _play_daemon(fleet, state)
    started = time.monotonic()
    result = cli("deploy", "digits:1.0.0", "--profile", "rpi4", "--wait")
    thread.join()
    assert time.monotonic() - started < 10  # not the default timeout of 124 s
    assert result.exit_code == code, result.output
    first, *table = result.stdout.splitlines()
    assert re.fullmatch(r"deployment dep-\S+: 2 device\(s\)", first)
    assert [line.split()[::3] for line in table[1:]] == [["pi-1", state], ["pi-2", state]]
    assert f"2/2 finished: {state} 2" in result.stderr  # the progress line, on stderr
    if code:
        assert result.stderr.splitlines()[-1] == "error: not every target committed (failed 2)"


def test_deploy_wait_times_out_with_exit_3_and_a_hint(cli: Cli, fleet: Path) -> None:
    result = cli("deploy", "digits:1.0.0", "--device", "pi-1", "--wait", "--timeout", "0")
    assert result.exit_code == 3
    assert "0/1 finished: pending 1" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "error: timed out after 0 s: 1 of 1 target(s) unfinished (pending 1); "
        "nothing is sent until `edgefleet serve` runs"
    )
    assert _deployments(fleet) == [("pi-1", "pending")]


def test_ctrl_c_during_wait_prints_the_id_and_how_to_follow_it(cli: Cli, fleet: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.controller", "deploy", "digits:1.0.0", "-d", "pi-1",
         "--wait"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        dep_id = re.fullmatch(r"deployment (dep-\S+): 1 device\(s\)\n", first)
        assert dep_id, first
        time.sleep(0.5)  # waiting now
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert stderr.splitlines()[-1] == (
        f"interrupted: deployment {dep_id[1]} carries on; "
        f"follow it with `edgefleet rollout status {dep_id[1]}`"
    )


def test_waiting_reports_progress_with_the_time_elapsed(cli: Cli, fleet: Path) -> None:
    dep_id = json.loads(cli.ok("deploy", "digits:1.0.0", "-p", "rpi4", "--json").stdout)[0][
        "deployment_id"
    ]
    now = [0.0]
    seen: list[tuple[list[str], float]] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds
        with sqlite3.connect(fleet / "registry.db") as conn:  # the daemon, between two looks
            conn.execute("UPDATE deployment SET state = 'committed' WHERE id = ?", (len(seen),))

    with opened(fleet) as home:
        rows = wait_for_deployment(
            home, dep_id, timeout_s=60, poll_s=2,
            on_progress=lambda rows, elapsed: seen.append(([r.state for r in rows], elapsed)),
            clock=lambda: now[0], sleep=sleep,
        )  # fmt: skip
    assert [r.state for r in rows] == ["committed", "committed"]
    assert seen == [
        (["pending", "pending"], 0.0),
        (["committed", "pending"], 2.0),
        (["committed", "committed"], 4.0),
    ]
