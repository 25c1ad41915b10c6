"""The loops the CLI used to run itself, as library functions Python users call too:
waiting for a deployment, following events, and the daemon's jobs on one clock."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlmodel import select

from edgefleet import shared
from edgefleet.controller import (
    Deployment,
    DeploymentPublic,
    DeploymentState,
    Device,
    Home,
    follow_events,
    wait_for_deployment,
)
from edgefleet.controller import deploy as record_deployment
from edgefleet.controller.catalog import add_model
from edgefleet.controller.daemon import Job, ingest_many, run_jobs
from edgefleet.controller.fleet import add_device
from edgefleet.controller.registry import DeviceCreate
from edgefleet.shared import DeviceState
from edgefleet.shared.errors import BrokerError


@pytest.fixture
def deployment(home: Home, model_file: Path) -> str:
    for name in ("pi-1", "pi-2"):
        add_device(home, DeviceCreate(name=name, profile="rpi4"))
    add_model(home, model_file, name="digits", version="1.0.0")
    return record_deployment(home, "digits:1.0.0", profile="rpi4")[0].deployment_id


def _set_state(home: Home, device: str, state: DeploymentState) -> None:
    with home.session(write=True) as session:
        found = session.exec(
            select(Deployment).join(Device).where(Device.name == device)  # type: ignore[arg-type]
        ).all()
        assert found
        for row in found:
            row.state = state.value
            session.add(row)


class FakeTime:
    """A clock that moves only when the code under test sleeps; each sleep may act first."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.on_sleep: list = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if self.sleeps < len(self.on_sleep):
            self.on_sleep[self.sleeps]()
        self.sleeps += 1
        self.now += seconds


def test_waiting_returns_once_every_device_is_finished(home: Home, deployment: str) -> None:
    time = FakeTime()
    time.on_sleep = [  # the daemon's work, as the registry shows it between two polls
        lambda: _set_state(home, "pi-1", DeploymentState.COMMITTED),
        lambda: _set_state(home, "pi-2", DeploymentState.FAILED),
    ]
    seen: list[tuple[str, str]] = []

    rows = wait_for_deployment(
        home,
        deployment,
        timeout_s=60,
        on_change=lambda row: seen.append((row.device, row.state)),
        clock=time.clock,
        sleep=time.sleep,
    )

    assert [(r.device, r.state) for r in rows] == [("pi-1", "committed"), ("pi-2", "failed")]
    assert seen == [
        ("pi-1", "pending"),
        ("pi-2", "pending"),
        ("pi-1", "committed"),
        ("pi-2", "failed"),
    ]
    assert time.sleeps == 2  # it stopped polling as soon as both were finished


def test_waiting_gives_up_at_the_timeout_with_the_rows_as_they_are(
    home: Home, deployment: str
) -> None:
    time = FakeTime()
    rows = wait_for_deployment(
        home, deployment, timeout_s=5, poll_s=1, clock=time.clock, sleep=time.sleep
    )
    assert [r.state for r in rows] == ["pending", "pending"]
    assert all(isinstance(r, DeploymentPublic) for r in rows)
    assert time.now == pytest.approx(6)  # the first poll past the deadline returns


def test_following_yields_stored_events_then_new_ones_in_order(home: Home, deployment: str) -> None:
    def report(state: DeviceState) -> None:
        message = shared.EventMessage(device_id="pi-1", deployment_id=deployment, state=state)
        with home.session(write=True) as session:
            ingest_many(session, [("pi-1", message)])

    report(DeviceState.DOWNLOADING)
    time = FakeTime()
    time.on_sleep = [lambda: report(DeviceState.VERIFYING), lambda: report(DeviceState.LOADING)]
    polls = iter([False, False, True])

    states = [
        e.state
        for e in follow_events(
            home, device="pi-1", stopped=lambda: next(polls), sleep=time.sleep, poll_s=0.1
        )
    ]

    assert states == ["downloading", "verifying", "loading"]


def test_jobs_run_in_order_on_one_clock_and_survive_their_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = threading.Event()
    ran: list[str] = []
    failures = iter([BrokerError("the broker is away")])

    def flaky() -> None:
        ran.append("flaky")
        if (error := next(failures, None)) is not None:
            raise error

    def counter() -> None:
        ran.append("counter")
        if ran.count("counter") == 3:
            stop.set()

    run_jobs([Job("flaky", 0.01, flaky), Job("counter", 0.01, counter)], stop)

    assert ran == ["flaky", "counter"] * 3
    assert "flaky: the broker is away" in caplog.text
