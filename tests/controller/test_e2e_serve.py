"""End to end: `edgefleet serve` as a subprocess, a private Mosquitto, real agent subprocesses.

A deploy to a profile reaches exactly the devices of that profile; a device that
is offline at deploy time gets the model when it returns; a daemon stopped with
SIGTERM mid-deployment carries on when started again; a command committed as sent but
never published (the daemon killed in between) is sent when the daemon starts again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgefleet.controller import load_settings, open_home
from edgefleet.controller.rollout import dispatch_pending
from edgefleet.harness import (
    ControllerFleet,
    Proc,
    digits,
    infer_digits,
    mosquitto_binary,
    wait_until,
    write_digits_model,
)
from edgefleet.shared.errors import BrokerError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # serve and agent processes

try:
    mosquitto_binary()
except RuntimeError:  # pragma: no cover - set up by `make setup`
    pytest.skip("mosquitto is not installed", allow_module_level=True)


class Fleet(ControllerFleet):
    """The controller fleet with the digits model added and devices enrolled."""

    def setup(self, devices: dict[str, str], model_seed: int = 0) -> None:
        self.init()
        model = write_digits_model(self.tmp / "digits.onnx", seed=model_seed)
        self.ok("model", "add", str(model), "--name", "digits", "--version", "1.0.0")
        for name, profile in devices.items():
            self.add_device(name, profile)

    def wait_state(self, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
        try:
            return wait_until(
                lambda: (s := self.status())[name]["state"] == state and s, timeout, state
            )
        except TimeoutError:
            pytest.fail(f"{name} never reached {state}: {self.status()}\n{self.logs()}")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()


def _model_of(fleet: Fleet, name: str) -> dict[str, Any] | None:
    r = httpx.get(f"{fleet.url(name)}/v1/model")
    return r.json() if r.status_code == 200 else None


def test_deploy_to_a_profile_reaches_exactly_its_devices(fleet: Fleet) -> None:
    fleet.setup({"pi-1": "rpi4", "box-1": "x86-edge"})
    fleet.start_daemon()
    assert httpx.get(f"http://127.0.0.1:{fleet.http_port}/healthz").status_code == 200
    fleet.start_agent("pi-1")
    fleet.start_agent("box-1")
    fleet.wait_online("pi-1", "box-1")

    follower = Proc(
        [sys.executable, "-m", "edgefleet.controller", "events", "--follow", "--json"],
        fleet.tmp / "follow.log",
        fleet.env,
    )
    fleet.procs.append(follower)
    deployed = json.loads(
        fleet.ok(
            "deploy", "digits:1.0.0", "--profile", "rpi4", "--wait", "--timeout", "60", "--json"
        )
    )
    assert [(r["device"], r["state"]) for r in deployed] == [("pi-1", "committed")]

    meta = _model_of(fleet, "pi-1")
    assert meta is not None and (meta["name"], meta["version"]) == ("digits", "1.0.0")
    x, y = digits()
    probs = np.asarray(infer_digits(fleet.url("pi-1"), x[:200])["outputs"]["probs"])
    assert (probs.argmax(axis=1) == y[:200]).mean() > 0.8
    assert _model_of(fleet, "box-1") is None  # serving nothing

    # the device reports its latency; the registry keeps it
    after = wait_until(
        lambda: (s := fleet.status())["pi-1"]["p95_ms"] is not None and s, 20, "no p95 from pi-1"
    )
    assert after["pi-1"]["model"] == "digits:1.0.0"
    assert after["pi-1"]["p95_ms"] > 0
    assert after["box-1"]["model"] is None and after["box-1"]["state"] is None
    assert after["box-1"]["online"] is True
    assert fleet.events("pi-1") == [
        "downloading", "verifying", "loading", "testing", "switching", "committed",
    ]  # fmt: skip
    assert fleet.events("box-1") == []

    wait_until(lambda: '"committed"' in follower.text(), 10, "events --follow saw no commit")
    follower.stop()
    followed = [json.loads(line) for line in follower.text().splitlines() if line.startswith("{")]
    assert [e["state"] for e in followed] == fleet.events("pi-1")

    metrics = httpx.get(f"http://127.0.0.1:{fleet.http_port}/metrics").text
    assert "edgefleet_deployments_dispatched_total 1" in metrics
    assert 'edgefleet_messages_ingested_total{kind="event"} 6' in metrics
    assert 'edgefleet_artifact_requests_total{status="200"} 1' in metrics
    assert 'edgefleet_devices{online="true"} 2' in metrics
    assert 'edgefleet_device_deployments{state="committed"} 1.0' in metrics

    assert fleet.daemon is not None
    assert fleet.daemon.stop() == 0, fleet.daemon.text()[-2000:]
    assert "stopped" in fleet.daemon.text()


def test_a_device_offline_at_deploy_time_gets_the_model_when_it_returns(fleet: Fleet) -> None:
    fleet.setup({"pi-1": "rpi4", "pi-2": "rpi4"})
    fleet.start_daemon()
    fleet.start_agent("pi-1")
    fleet.start_agent("pi-2")
    fleet.wait_online("pi-1", "pi-2")
    fleet.agents["pi-2"]["proc"].stop()
    fleet.wait_online("pi-2", online=False)

    fleet.ok("deploy", "digits:1.0.0", "--profile", "rpi4")
    fleet.wait_state("pi-1", "committed")
    assert fleet.status()["pi-2"]["state"] == "sent"  # queued at the broker for pi-2

    fleet.start_agent("pi-2")
    fleet.wait_state("pi-2", "committed")
    meta = _model_of(fleet, "pi-2")
    assert meta is not None and meta["version"] == "1.0.0"


def test_the_daemon_stopped_mid_deployment_carries_on(fleet: Fleet) -> None:
    fleet.setup({"pi-1": "rpi4", "box-1": "x86-edge"})
    daemon = fleet.start_daemon()
    # pi-1 dawdles after its download, so the daemon goes away in the middle
    fleet.start_agent(
        "pi-1", EDGEFLEET_AGENT_TEST_MODE="1", EDGEFLEET_AGENT_TEST_PAUSE_IN="loading:4"
    )
    fleet.wait_online("pi-1")

    fleet.ok("deploy", "digits:1.0.0", "--device", "pi-1")
    wait_until(lambda: "loading" in fleet.events("pi-1"), 30, "pi-1 never started loading")
    assert daemon.stop() == 0, daemon.text()[-2000:]
    assert fleet.status()["pi-1"]["state"] == "in_progress"

    # while the daemon is away: pi-1 finishes, box-1 appears, a deployment is recorded
    fleet.start_agent("box-1")
    fleet.ok("deploy", "digits:1.0.0", "--device", "box-1")
    wait_until(
        lambda: (m := _model_of(fleet, "pi-1")) is not None and m["version"] == "1.0.0",
        30,
        "pi-1 never finished while the daemon was away",
    )
    assert fleet.status()["box-1"]["state"] == "pending"

    fleet.start_daemon()
    fleet.wait_state("pi-1", "committed")
    fleet.wait_state("box-1", "committed")
    # nothing pi-1 said while the daemon was down was lost
    assert fleet.events("pi-1") == [
        "downloading", "verifying", "loading", "testing", "switching", "committed",
    ]  # fmt: skip
    assert _model_of(fleet, "box-1") is not None


def test_a_command_the_broker_never_took_is_sent_when_the_daemon_starts_again(
    fleet: Fleet,
) -> None:
    fleet.setup({"pi-1": "rpi4"})
    daemon = fleet.start_daemon()
    fleet.start_agent("pi-1")
    fleet.wait_online("pi-1")
    assert daemon.stop() == 0, daemon.text()[-2000:]
    fleet.ok("deploy", "digits:1.0.0", "--device", "pi-1")

    # The crash window, in-process: the row is committed as sent, then the publish fails
    # as it would if `serve` were SIGKILLed before the broker took the message.
    def killed(topic: str, payload: bytes) -> None:
        raise BrokerError("the daemon died here")

    home = open_home(load_settings(fleet.home, env=fleet.env))
    try:
        with pytest.raises(BrokerError):
            dispatch_pending(home, killed)
    finally:
        home.close()
    assert fleet.status()["pi-1"]["state"] == "sent"

    daemon = fleet.start_daemon()
    fleet.wait_state("pi-1", "committed")
    meta = _model_of(fleet, "pi-1")
    assert meta is not None and (meta["name"], meta["version"]) == ("digits", "1.0.0")
    assert fleet.events("pi-1")[-1] == "committed"
    metrics = httpx.get(f"http://127.0.0.1:{fleet.http_port}/metrics").text
    assert "edgefleet_deployments_resent_total 1" in metrics
    assert "edgefleet_deployments_dispatched_total 0" in metrics
    assert "resent 1 unconfirmed deployment" in daemon.text()
