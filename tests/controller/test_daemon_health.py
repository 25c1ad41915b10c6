"""The daemon tells the truth about itself: ``/healthz`` and ``/readyz`` judge its broker
link, its registry and its jobs (a table of decisions, in-process), and against the real
thing — `edgefleet serve`, Mosquitto, the registry — a broker that stops or refuses the
daemon's login makes it 503 with the broker's reason and a log line, and recovery makes it
200 again. Startup errors are one line and a non-zero exit; the heartbeat tells the CLI
whether a daemon is alive."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlmodel import select

from edgefleet.controller import Home, load_settings, open_home
from edgefleet.controller.daemon import (
    LATE_AFTER_TURNS,
    MIN_LATE_S,
    REGISTRY_CHECK,
    Health,
    Job,
    run_jobs,
)
from edgefleet.controller.fleet import (
    DaemonLiveness,
    DaemonState,
    daemon_state,
    record_heartbeat,
)
from edgefleet.controller.registry import DaemonHeartbeat, create_engine, current_version
from edgefleet.harness import Broker, ControllerFleet, free_port, mosquitto_binary, wait_until
from edgefleet.shared.errors import BrokerError

from .conftest import Cli

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


# -- Health's decisions, in-process --------------------------------------------------------


@dataclass
class Link:
    """A broker link's state as health reads it (``mqtt.MqttLink`` in the daemon)."""

    connected: bool = True
    since: datetime = T0
    last_error: str | None = None


@dataclass
class Clock:
    """One clock for both of health's: monotonic seconds and the UTC time people read."""

    t: float = 0.0

    def mono(self) -> float:
        return self.t

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.t)


@dataclass
class Case:
    name: str
    link: Link
    steps: list[tuple[float, str, str, float]]  # (at, "ok"|error text, job, every_s)
    at: float  # when it is judged
    healthy: bool
    reasons: list[str] = field(default_factory=list)  # a piece of each reason, in order


FRESH = [(0.0, "ok", REGISTRY_CHECK, 5.0), (0.0, "ok", "dispatch", 0.5)]
CASES = [
    Case("everything fresh", Link(), FRESH, 1.0, True),
    Case(
        "broker refused our login",
        Link(connected=False, last_error="refused by the broker: Not authorized"),
        FRESH,
        1.0,
        False,
        ["broker mqtt://b:1883: not connected for 1.0 s: refused by the broker: Not authorized"],
    ),
    Case(
        "broker never answered",
        Link(connected=False),
        FRESH,
        1.0,
        False,
        ["not connected for 1.0 s: no answer yet"],
    ),
    Case(
        "registry check failed on its last run",
        Link(),
        [*FRESH, (2.0, "connection refused", REGISTRY_CHECK, 5.0)],
        3.0,
        False,
        ["registry: unreachable for 1.0 s: connection refused"],
    ),
    Case(
        "registry answered again",
        Link(),
        [*FRESH, (2.0, "refused", REGISTRY_CHECK, 5.0), (7.0, "ok", REGISTRY_CHECK, 5.0)],
        8.0,
        True,
    ),
    Case("jobs not run yet, just started", Link(), [], MIN_LATE_S - 1, True),
    Case(
        "registry never checked since the start",
        Link(),
        [(MIN_LATE_S, "ok", "dispatch", 0.5)],
        MIN_LATE_S + 1,
        False,
        ["registry: no successful run in the 11 s since the start"],
    ),
    Case("a quick job many turns late, under the floor", Link(), FRESH, MIN_LATE_S - 1, True),
    Case(
        "a quick job past the floor",
        Link(),
        [(MIN_LATE_S, "ok", REGISTRY_CHECK, 5.0), (0.0, "ok", "dispatch", 0.5)],
        MIN_LATE_S + 1,
        False,
        ["job dispatch: no successful run for 11 s (every 0.5 s)"],
    ),
    Case(
        "a slow job within its turns",
        Link(),
        [(0.0, "ok", REGISTRY_CHECK, 6.0)],
        LATE_AFTER_TURNS * 6.0 - 1,
        True,
    ),
    Case(
        "a slow job past its turns",
        Link(),
        [(0.0, "ok", REGISTRY_CHECK, 6.0)],
        LATE_AFTER_TURNS * 6.0 + 1,
        False,
        ["registry: no successful run for 19 s (every 6.0 s)"],
    ),
    Case(
        "a job failing briefly is not an outage",
        Link(),
        [*FRESH, (1.0, "locked", "dispatch", 0.5), (1.5, "locked", "dispatch", 0.5)],
        2.0,
        True,
    ),
    Case(
        "a job failing for long",
        Link(),
        [
            (11.0, "ok", REGISTRY_CHECK, 5.0),
            (0.0, "ok", "dispatch", 0.5),
            (5.0, "database is locked", "dispatch", 0.5),
            (10.0, "database is locked", "dispatch", 0.5),
        ],
        11.0,
        False,
        [
            "job dispatch: no successful run for 11 s (every 0.5 s); 2 failure(s) in a row: "
            "database is locked"
        ],
    ),
    Case(
        "everything wrong at once, each said",
        Link(connected=False, last_error="cannot connect: Connection refused"),
        [(0.0, "ok", "dispatch", 0.5), (12.0, "no such host", REGISTRY_CHECK, 5.0)],
        12.0,
        False,
        ["broker", "registry: unreachable for 0.0 s: no such host", "job dispatch"],
    ),
]


def _judge(case: Case) -> Health:
    clock = Clock()
    health = Health(case.link, broker_url="mqtt://b:1883", clock=clock.mono, now=clock.now)
    for at, outcome, job, every_s in sorted(case.steps, key=lambda s: s[0]):
        clock.t = at
        if outcome == "ok":
            health.job_ran(job, every_s)
        else:
            health.job_failed(job, every_s, outcome)
    clock.t = case.at
    return health


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_health_decides_from_its_checks(case: Case) -> None:
    health = _judge(case)
    verdict = health.verdict()
    assert verdict.healthy is case.healthy, verdict.reasons
    assert len(verdict.reasons) == len(case.reasons), verdict.reasons
    for piece, reason in zip(case.reasons, verdict.reasons, strict=True):
        assert piece in reason
    healthz = health.answer("/healthz")
    assert healthz is not None
    assert int(healthz.status) == (200 if case.healthy else 503)
    lines = healthz.body.decode().splitlines()
    assert lines == (["ok"] if case.healthy else list(verdict.reasons))
    readyz = health.answer("/readyz")
    assert readyz is not None and readyz.status == healthz.status
    body = json.loads(readyz.body)
    assert body["status"] == ("ok" if case.healthy else "unhealthy")
    assert body["reasons"] == list(verdict.reasons)
    assert body["checks"]["broker"]["ok"] is case.link.connected


def test_readyz_shows_every_check_with_its_times() -> None:
    link = Link(connected=False, last_error="refused by the broker: Not authorized")
    health = _judge(Case("", link, [*FRESH, (1.0, "locked", "dispatch", 0.5)], 2.0, False))
    answer = health.answer("/readyz")
    assert answer is not None and answer.content_type == "application/json"
    checks = json.loads(answer.body)["checks"]
    assert checks["broker"] == {
        "ok": False,
        "url": "mqtt://b:1883",
        "connected": False,
        "since": "2026-01-01T12:00:00+00:00",
        "last_error": "refused by the broker: Not authorized",
    }
    assert checks["registry"]["ok"] is True
    assert checks["registry"]["last_ok_at"] == "2026-01-01T12:00:00+00:00"
    assert checks["jobs"]["dispatch"] == {
        "ok": True,
        "every_s": 0.5,
        "last_ok_at": "2026-01-01T12:00:00+00:00",
        "failures": 1,
        "last_error": "locked",
        "last_error_at": "2026-01-01T12:00:01+00:00",
    }
    assert REGISTRY_CHECK not in checks["jobs"]
    assert health.answer("/metrics") is None and health.answer("/healthz/x") is None


def test_run_jobs_records_every_run_and_logs_a_streak_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = threading.Event()
    health = Health()
    outcomes = iter([BrokerError("away"), BrokerError("away"), BrokerError("away"), None])
    seen: list[str] = []

    def flaky() -> None:
        if (error := next(outcomes, None)) is not None:
            raise error
        seen.append("ok")
        stop.set()

    with caplog.at_level(logging.DEBUG, logger="edgefleet.controller.daemon"):
        run_jobs([Job("flaky", 0.001, flaky)], stop, health=health)

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["flaky: away"]  # the streak's first failure; the repeats at debug level
    assert "flaky: away (3 failures in a row)" in caplog.text
    assert "flaky: working again after 3 failure(s)" in caplog.text
    answer = health.answer("/readyz")
    assert answer is not None
    check = json.loads(answer.body)["checks"]["jobs"]["flaky"]
    assert (check["ok"], check["failures"], check["last_error"]) == (True, 0, "away")


def test_an_unreachable_registry_fails_its_check_with_the_drivers_reason() -> None:
    """The registry check is the daemon's question (``current_version``) put through a real
    PostgreSQL driver to a port where nothing listens."""
    pytest.importorskip("psycopg2")
    engine = create_engine(f"postgresql://u:p@127.0.0.1:{free_port()}/edgefleet")
    stop = threading.Event()
    health = Health()

    def check() -> None:
        try:
            current_version(engine)
        finally:
            stop.set()

    try:
        run_jobs([Job(REGISTRY_CHECK, 5.0, check)], stop, health=health)
    finally:
        engine.dispose()
    verdict = health.verdict()
    assert not verdict.healthy
    (reason,) = verdict.reasons
    assert reason.startswith("registry: unreachable for ")
    assert reason.endswith("Connection refused")  # the driver's own words


# -- daemon_state, from the registry's heartbeat ------------------------------------------


def _beat(home: Home, *, at: datetime, stopped: bool = False, **kw: Any) -> None:
    values: dict[str, Any] = {
        "name": "edgefleet-controller", "host": "ctl-1", "pid": 4242, "version": "0.1.0",
        "every_s": 5.0, "started_at": at - timedelta(hours=1), "beat_at": at,
        "stopped_at": at if stopped else None, "broker_connected": True, "detail": "",
    }  # fmt: skip
    record_heartbeat(home, DaemonHeartbeat(**{**values, **kw}))


def test_daemon_state_alive_stale_and_absent(home: Home) -> None:
    absent = daemon_state(home, now=T0)
    assert (absent.liveness, absent.alive) == (DaemonLiveness.ABSENT, False)
    assert absent.describe() == "no daemon has run against this registry"

    _beat(home, at=T0)
    alive = daemon_state(home, now=T0 + timedelta(seconds=14))
    assert alive.alive and alive.describe() == "serve on ctl-1:4242 alive, broker connected"
    assert (alive.host, alive.pid, alive.age_s) == ("ctl-1", 4242, 14.0)

    stale = daemon_state(home, now=T0 + timedelta(seconds=16))  # 3 beats of 5 s missed
    assert stale.liveness is DaemonLiveness.STALE
    assert stale.describe() == "serve on ctl-1:4242 last seen 16 s ago"
    assert daemon_state(home, now=T0 + timedelta(minutes=5)).describe().endswith("5 min ago")

    _beat(home, at=T0, broker_connected=False, detail="broker mqtt://b: not connected")
    unhealthy = daemon_state(home, now=T0)
    assert unhealthy.alive
    assert unhealthy.describe() == (
        "serve on ctl-1:4242 alive but unhealthy: broker mqtt://b: not connected"
    )

    _beat(home, at=T0, stopped=True)  # a clean stop: not alive a second later
    stopped = daemon_state(home, now=T0 + timedelta(seconds=1))
    assert stopped.liveness is DaemonLiveness.STALE
    assert stopped.describe() == "serve on ctl-1:4242 stopped 1 s ago"
    with home.session() as session:
        assert len(session.exec(select(DaemonHeartbeat)).all()) == 1  # one row per daemon


def test_serve_rejects_a_bad_log_level_as_usage(cli: Cli, initialised: Path) -> None:
    result = cli("serve", "--log-level", "loud")
    assert result.exit_code == 2
    assert "Invalid value for '--log-level'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("EDGEFLEET_BROKER_URL", "http://127.0.0.1:1883", "error: broker_url must look like"),
        ("EDGEFLEET_BROKER_URL", "mqtt://127.0.0.1:99999", "error: broker_url has a bad port"),
        (
            "EDGEFLEET_DATABASE_URL",
            "postgresql+psycopg2://nobody@127.0.0.1:1/none",
            "error: cannot ",  # open the database, or bring it up to date
        ),
    ],
    ids=["broker-url-scheme", "broker-url-port", "registry-unreachable"],
)
def test_serve_that_cannot_start_says_why_in_one_line(
    cli: Cli,
    initialised: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    says: str,
) -> None:
    if variable == "EDGEFLEET_DATABASE_URL":
        pytest.importorskip("psycopg2")
    monkeypatch.setenv(variable, value)
    result = cli("serve")
    assert result.exit_code != 0
    (line,) = result.stderr.splitlines()
    assert line.startswith(says)
    assert result.stdout == ""


# -- against the real daemon, broker and registry -----------------------------------------

try:
    mosquitto_binary()
    HAVE_MOSQUITTO = True
except RuntimeError:  # pragma: no cover - set up by `make setup`
    HAVE_MOSQUITTO = False


def real(test: Callable[..., None]) -> Callable[..., None]:
    """A test with `edgefleet serve` and Mosquitto as subprocesses."""
    for mark in (
        pytest.mark.slow,
        pytest.mark.timeout(180),
        pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto is not installed"),
    ):
        test = mark(test)
    return test


def _healthz(fleet: ControllerFleet) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{fleet.http_port}/healthz", timeout=10)


def _wait_health(
    fleet: ControllerFleet, status: int, what: str, saying: str = ""
) -> httpx.Response:
    def answered() -> httpx.Response | None:
        r = _healthz(fleet)
        return r if r.status_code == status and saying in r.text else None

    try:
        return wait_until(answered, 30, what)
    except TimeoutError:
        pytest.fail(f"{what}: /healthz says {_healthz(fleet).text!r}\n{fleet.logs()}")


def _wait_log(fleet: ControllerFleet, pattern: str) -> str:
    assert fleet.daemon is not None
    daemon = fleet.daemon
    try:
        return wait_until(
            lambda: next(
                (line for line in daemon.text().splitlines() if re.search(pattern, line)), None
            ),
            30,
            f"a log line like {pattern!r}",
        )
    except TimeoutError:
        pytest.fail(f"no log line like {pattern!r}:\n{fleet.logs()}")


@real
def test_a_stopped_broker_makes_serve_unhealthy_until_it_returns(fleet: ControllerFleet) -> None:
    fleet.init()
    fleet.start_daemon()
    # it answers once the broker did: the first answer is already the truth
    assert _healthz(fleet).text == "ok\n"

    fleet.broker.stop()
    down = _wait_health(fleet, 503, "unhealthy with the broker down")
    assert down.text.startswith(f"broker {fleet.broker.url}: not connected for ")
    _wait_log(fleet, r"WARNING .*lost the broker at .*: connection lost")
    _wait_log(
        fleet, r"WARNING .*no connection to the broker at .*: cannot connect: Connection refused"
    )
    ready = httpx.get(f"http://127.0.0.1:{fleet.http_port}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["broker"]["last_error"] == "cannot connect: Connection refused"

    fleet.broker.start()  # the same port
    assert _wait_health(fleet, 200, "healthy again").text == "ok\n"
    _wait_log(fleet, r"INFO .*connected to .* after \d+ failed attempt")


CONTROLLER_USER = "edgefleet-controller"


def _secure_broker(fleet: ControllerFleet, password: str) -> None:
    """Replace the fleet's anonymous Mosquitto, on the same port, with one that lets in only
    the users in `edgefleet broker config`'s files, the controller with ``password``."""
    port = fleet.broker.port
    fleet.broker.stop()
    env = {**fleet.env, "EDGEFLEET_BROKER_URL": _login_url(password, port)}
    folder = fleet.tmp / f"mosquitto-{len(list(fleet.tmp.glob('mosquitto-*')))}.d"
    subprocess_ok(fleet, env, "broker", "config", "--out", str(folder))
    fleet.broker = Broker(fleet.tmp / "secure-broker", port=port, include_dir=folder).start()


def _login_url(password: str, port: int) -> str:
    return f"mqtt://{CONTROLLER_USER}:{quote(password, safe='')}@127.0.0.1:{port}"


def subprocess_ok(fleet: ControllerFleet, env: dict[str, str], *args: str) -> None:
    saved = fleet.env
    fleet.env = env
    try:
        fleet.ok(*args)
    finally:
        fleet.env = saved


@real
def test_a_refused_login_makes_serve_unhealthy_with_the_brokers_reason(
    fleet: ControllerFleet,
) -> None:
    fleet.init()
    _secure_broker(fleet, "right")
    fleet.env["EDGEFLEET_BROKER_URL"] = _login_url("right", fleet.broker.port)
    fleet.start_daemon()
    _wait_health(fleet, 200, "healthy with the right password")

    _secure_broker(fleet, "changed")  # the broker no longer knows the daemon's password
    refused = _wait_health(
        fleet, 503, "unhealthy once the broker refuses the login", saying="Not authorized"
    )
    assert refused.text.startswith(f"broker {fleet.broker.url}: not connected for ")
    assert refused.text.endswith(": refused by the broker: Not authorized\n")
    _wait_log(fleet, r"WARNING .*no connection to the broker at .*refused by the broker: Not auth")
    assert "right" not in fleet.daemon.text()  # type: ignore[union-attr]  # no password logged

    _secure_broker(fleet, "right")
    _wait_health(fleet, 200, "healthy once the broker takes the password again")


@real
def test_a_taken_port_is_one_line_and_a_failed_start(fleet: ControllerFleet) -> None:
    fleet.init()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", fleet.http_port))
        taken.listen()
        result = fleet.run("serve", timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{fleet.http_port}: ")
    assert "already in use" in line and "http_port" in line


def _alive(home: Home) -> DaemonState | None:
    state = daemon_state(home)
    return state if state.alive else None


@real
def test_the_heartbeat_says_whether_serve_is_alive(fleet: ControllerFleet) -> None:
    fleet.init()
    home = open_home(load_settings(fleet.home, env=fleet.env))
    try:
        assert daemon_state(home).liveness is DaemonLiveness.ABSENT
        daemon = fleet.start_daemon()
        alive = wait_until(lambda: _alive(home), 30, "a heartbeat")
        assert alive.pid == daemon.proc.pid and alive.host == socket.gethostname()
        assert alive.describe() == (f"serve on {alive.host}:{alive.pid} alive, broker connected")
        _wait_health(fleet, 200, "healthy")

        daemon.proc.kill()  # no clean stop: only the beat's age tells
        daemon.proc.wait(timeout=30)
        last = daemon_state(home)
        assert last.beat_at is not None and last.every_s is not None
        assert last.stopped_at is None
        soon = daemon_state(home, now=last.beat_at + timedelta(seconds=last.every_s))
        assert soon.alive
        later = daemon_state(home, now=last.beat_at + timedelta(seconds=3 * last.every_s + 1))
        assert later.liveness is DaemonLiveness.STALE
        assert later.describe().startswith(f"serve on {last.host}:{last.pid} last seen ")

        daemon = fleet.start_daemon()
        wait_until(lambda: daemon_state(home).pid == daemon.proc.pid, 30, "the new heartbeat")
        assert daemon.stop() == 0  # SIGTERM: a clean stop is recorded at once
        stopped = daemon_state(home)
        assert stopped.liveness is DaemonLiveness.STALE and stopped.stopped_at is not None
        assert "stopped" in stopped.describe()
    finally:
        home.close()
