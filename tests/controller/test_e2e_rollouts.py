"""End to end: staged rollouts carried out by a real `edgefleet serve`, over a private
Mosquitto, to real agent subprocesses whose inference endpoints carry steady client traffic.

One fleet (six rpi4 devices serving digits 1.0.0) is shared by the module; every test rolls
out a model version of its own and starts from whatever each device serves then, so its
gates compare each device with itself. The operator's side is the CLI: `rollout start`,
`rollout status --watch --json` (one process that follows the rollout, as an operator
would, instead of a CLI start-up a second), `promote`, `abort`, `analysis`, `rollback`.

- a good version passes three waves; every device serves it;
- a version many times slower stops in wave 1: aborted, the wave-1 device serves its old
  model again, later devices never hear of it, and no client request failed;
- a version that fails requests aborts on the error gate;
- with no traffic the wave is inconclusive and the rollout pauses, saying why;
- `serve` SIGKILLed mid-bake and started again carries the rollout to its end, sending
  nothing twice;
- a device offline when its wave starts is queued, not counted: the wave is judged on the
  others, and the device gets the version when it comes back;
- an operator's abort mid-rollout sends every touched device back;
- a rollback that arrives after the device moved on is refused (rollback_mismatch) and the
  device keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.harness import (
    ClientTraffic,
    ControllerFleet,
    Proc,
    mosquitto_binary,
    wait_until,
    write_digits_model,
    write_failing_digits_model,
    write_slow_digits_model,
)

# serve, six agents and the client load on two cores; the first test also builds the fleet
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

try:
    mosquitto_binary()
except RuntimeError:  # pragma: no cover - set up by `make setup`
    pytest.skip("mosquitto is not installed", allow_module_level=True)

DEVICES = [f"pi-{i}" for i in range(1, 7)]
RATE = 40.0  # client requests a second per device
WARM_UP = 100  # answers per device before a rollout starts: its baseline window has traffic
BAKE = "min_requests=100,min=5s,max=40s"
THREE_WAVES = ("--waves", "1,3,100%")  # 1, 2 and 3 of the six devices
ROLLOUT_TIMEOUT = 150.0  # generous: three waves take well under a minute here
# The latency gate on this shared 2-core host. Same-model swaps here (agents at 40
# requests/s, 8 s windows, other test runs loading the host to 6-7) gave per-device p95
# ratios from 0.1 to 2.7, moving together on every device; a same-model wave failed the
# default gate at a median ratio of 2.08 (binomial p=6e-15), and bench/rollout_safety.py
# saw 4 or 5 of 7 same-model rollouts abort: bursts of load make latency autocorrelated,
# which the gate's tests take for a real slowdown. So the good version is judged with
# room for that noise (it fails only past 5x its own baseline), the tests about something
# else leave latency out, and the slow-version test keeps the default tolerance.
NOISY_HOST = ("--gate", "latency.tolerance=4")
NOT_LATENCY = ("--gate", "off=latency")


class RolloutFleet(ControllerFleet):
    """The controller fleet, with what the tests ask of it as an operator."""

    def add_version(self, version: str, write: Callable[[Path], Path]) -> None:
        path = write(self.tmp / f"digits-{version}.onnx")
        self.ok("model", "add", str(path), "--name", "digits", "--version", version)

    def start_rollout(self, version: str, *args: str, bake: str = BAKE) -> str:
        started = json.loads(
            self.ok("rollout", "start", f"digits:{version}", *args, "--bake", bake, "--json")
        )
        return str(started["rollout"]["rollout_id"])

    def watch(self, rollout_id: str) -> Watch:
        proc = Proc(
            [
                sys.executable, "-m", "edgefleet.controller", "rollout", "status", rollout_id,
                "--watch", "--json", "--interval", "1",
            ],
            self.tmp / f"watch-{rollout_id}.log",
            {**self.env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.procs.append(proc)
        return Watch(self, proc)

    def analysis(self, rollout_id: str) -> list[dict[str, Any]]:
        return list(json.loads(self.ok("rollout", "analysis", rollout_id, "--json")))

    def events_of(self, deployment_id: str) -> dict[str, list[dict[str, Any]]]:
        """The events every device reported for ``deployment_id``, oldest first (devices
        that reported none are left out)."""
        events = json.loads(self.ok("events", "--limit", "10000", "--json"))
        out: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            if event["deployment_id"] == deployment_id:
                out.setdefault(event["device"], []).append(event)
        return out

    # Waiting polls the registry itself: a CLI start-up costs a second or more of CPU on
    # this host, which would load the very latencies the gates judge.

    def _query(self, sql: str, *args: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.home / "registry.db")) as db:
            return db.execute(sql, args).fetchall()

    def active_rollouts(self) -> list[str]:
        sql = "SELECT rollout_id FROM rollout WHERE state IN ('running', 'paused', 'rolling_back')"
        return [row[0] for row in self._query(sql)]

    def row_state(self, deployment_id: str, device: str) -> str | None:
        found = self._query(
            "SELECT d.state FROM deployment d JOIN device v ON v.id = d.device_id "
            "WHERE d.deployment_id = ? AND v.name = ?",
            deployment_id,
            device,
        )
        return str(found[0][0]) if found else None

    def serving(self, device: str) -> str | None:
        """The deployment id the device's inference endpoint says it serves."""
        r = httpx.get(f"{self.url(device)}/v1/model", timeout=10)
        return str(r.json()["deployment_id"]) if r.status_code == 200 else None

    def wait_serving(self, device: str, deployment_id: str | None, timeout: float = 30) -> None:
        try:
            wait_until(lambda: self.serving(device) == deployment_id, timeout, "serving")
        except TimeoutError:
            pytest.fail(f"{device} serves {self.serving(device)}, not {deployment_id}")

    def agent_running(self, device: str) -> bool:
        proc = self.agents[device]["proc"]
        return proc is not None and proc.proc.poll() is None

    def stop_agent(self, device: str) -> None:
        self.agents[device]["proc"].stop()
        self.wait_online(device, online=False)

    @contextlib.contextmanager
    def traffic(self, devices: list[str], poison_share: float = 0.0) -> Iterator[ClientTraffic]:
        """Steady clients on ``devices``, answered ``WARM_UP`` times each before the test
        goes on (so each device's baseline window holds requests)."""
        urls = {d: self.url(d) for d in devices}
        with ClientTraffic(urls, rate_per_s=RATE, poison_share=poison_share) as traffic:
            traffic.wait_answered(WARM_UP, timeout=60)
            yield traffic


class Watch:
    """`edgefleet rollout status ID --watch --json`: one JSON line per change, until the
    rollout ends (exit 0 completed, 1 aborted)."""

    def __init__(self, fleet: RolloutFleet, proc: Proc) -> None:
        self.fleet = fleet
        self.proc = proc

    def seen(self) -> list[dict[str, Any]]:
        lines = self.proc.text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]

    def wait(
        self, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((d for d in reversed(self.seen()) if check(d)), None)

        try:
            return wait_until(found, timeout, what, every=0.5)
        except TimeoutError:
            pytest.fail(f"{what}: {self.last()}\n{self.fleet.logs()}")

    def finished(self, timeout: float = ROLLOUT_TIMEOUT) -> tuple[int, dict[str, Any]]:
        """The exit code and the last detail once the rollout has ended."""
        try:
            wait_until(lambda: self.proc.proc.poll() is not None, timeout, "rollout end")
        except TimeoutError:
            pytest.fail(f"the rollout did not end: {self.last()}\n{self.fleet.logs()}")
        return self.proc.proc.returncode, self.last()

    def last(self) -> dict[str, Any]:
        seen = self.seen()
        return seen[-1] if seen else {"watch": self.proc.text()[-2000:]}


def wave_devices(detail: dict[str, Any]) -> list[list[str]]:
    return [w["devices"] for w in detail["waves"]]


def rows(detail: dict[str, Any], kind: str = "deploy") -> dict[str, str]:
    """Each device's row state in the rollout."""
    return {r["device"]: r["state"] for r in detail["devices"] if r["kind"] == kind}


def rollback_of(rollout_id: str) -> str:
    """The deployment id of the rollback orders that undo a rollout."""
    return f"{rollout_id}.rollback"


def states(events: list[dict[str, Any]]) -> list[str]:
    return [e["state"] for e in events]


def failed_gates(evaluations: list[dict[str, Any]], wave: int) -> set[str]:
    return {e["gate"] for e in evaluations if e["wave"] == wave and e["decision"] == "fail"}


def no_failed_requests(traffic: ClientTraffic) -> None:
    assert all(failed == 0 for _, failed in traffic.counts().values()), traffic.failures()


def answered_by(traffic: ClientTraffic, device: str) -> dict[str, int]:
    return dict(traffic.tallies()[device].deployments)


def wait_answers_from(
    traffic: ClientTraffic, device: str, deployment_id: str, more: int = 40
) -> None:
    """Wait until ``device`` answered ``more`` further requests, all from ``deployment_id``
    (after a few let through: a request in flight may finish on the model it started on)."""

    def answers() -> int:
        return sum(answered_by(traffic, device).values())

    settled = answers() + 5
    wait_until(lambda: answers() >= settled, 30, f"{device} answered no more requests")
    before = answered_by(traffic, device)
    wait_until(lambda: answers() >= settled + more, 30, f"{device} answered no more requests")
    now = answered_by(traffic, device)
    new = {k: n - before.get(k, 0) for k, n in now.items() if n != before.get(k, 0)}
    assert set(new) == {deployment_id}, (device, new)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutFleet]:
    f = RolloutFleet(tmp_path_factory.mktemp("rollouts"))
    try:
        f.init()
        f.add_version("1.0.0", lambda p: write_digits_model(p, seed=0))
        for name in DEVICES:
            f.add_device(name, "rpi4", "site=lab")
        f.start_daemon()
        for name in DEVICES:
            f.start_agent(name, telemetry_interval_s=0.5, wait=False)
        f.wait_online(*DEVICES, timeout=90)
        f.ok("deploy", "digits:1.0.0", "--label", "site=lab", "--wait", "--timeout", "90")
        yield f
    except BaseException:
        print(f.logs())
        raise
    finally:
        f.close()


@pytest.fixture(autouse=True)
def tidy(fleet: RolloutFleet) -> Iterator[None]:
    """Each test starts with every agent up and no rollout active, whatever the one before
    it left; the logs are printed with a failure (pytest shows them only then)."""
    stopped = [d for d in DEVICES if not fleet.agent_running(d)]
    for name in stopped:
        fleet.start_agent(name, telemetry_interval_s=0.5)
    if stopped:
        fleet.wait_online(*stopped)
    yield
    print(fleet.logs(4000))
    for active in fleet.active_rollouts():
        fleet.run("rollout", "abort", active, "--reason", "test teardown")


def test_a_good_version_passes_three_waves_and_every_device_serves_it(
    fleet: RolloutFleet,
) -> None:
    fleet.add_version("2.0.0", lambda p: write_digits_model(p, seed=1))
    with fleet.traffic(DEVICES) as traffic:
        rollout_id = fleet.start_rollout("2.0.0", "--label", "site=lab", *THREE_WAVES, *NOISY_HOST)
        code, detail = fleet.watch(rollout_id).finished()
        assert code == 0, detail["rollout"]
        assert detail["rollout"]["state"] == "completed"
        assert wave_devices(detail) == [["pi-1"], ["pi-2", "pi-3"], ["pi-4", "pi-5", "pi-6"]]
        assert [w["state"] for w in detail["waves"]] == ["passed"] * 3
        assert rows(detail) == dict.fromkeys(DEVICES, "committed")
        for name in DEVICES:
            assert fleet.serving(name) == rollout_id
            wait_answers_from(traffic, name, rollout_id)
    no_failed_requests(traffic)
    # each wave was passed by its gates, every one of them on its last look
    evaluations = fleet.analysis(rollout_id)
    for wave in range(3):
        last = {e["gate"]: e["decision"] for e in evaluations if e["wave"] == wave}
        assert last == dict.fromkeys(["install", "latency", "absolute", "errors"], "pass"), wave


def test_a_slower_version_stops_in_wave_one_and_rolls_back_without_a_failed_request(
    fleet: RolloutFleet,
) -> None:
    fleet.add_version("3.0.0-slow", lambda p: write_slow_digits_model(p, seed=0))
    before = {name: fleet.serving(name) for name in DEVICES}
    with fleet.traffic(DEVICES) as traffic:
        rollout_id = fleet.start_rollout("3.0.0-slow", "--label", "site=lab", *THREE_WAVES)
        code, detail = fleet.watch(rollout_id).finished()
        assert code == 1, detail["rollout"]
        assert detail["rollout"]["state"] == "aborted"
        assert "latency" in failed_gates(fleet.analysis(rollout_id), 0)
        assert [w["state"] for w in detail["waves"]] == ["failed", "cancelled", "cancelled"]
        assert wave_devices(detail)[0] == ["pi-1"]
        # pi-1 served the slow version, then went back to its own previous model
        fleet.wait_serving("pi-1", before["pi-1"])
        wait_answers_from(traffic, "pi-1", str(before["pi-1"]))
        assert answered_by(traffic, "pi-1").get(rollout_id, 0) > 0
    no_failed_requests(traffic)
    assert states(fleet.events_of(rollback_of(rollout_id))["pi-1"]) == [
        "rolling_back", "rolled_back",
    ]  # fmt: skip
    # the later waves' devices never received it
    assert rows(detail) == {"pi-1": "rolled_back", **dict.fromkeys(DEVICES[1:], "cancelled")}
    assert list(fleet.events_of(rollout_id)) == ["pi-1"]
    for name in DEVICES[1:]:
        assert fleet.serving(name) == before[name]
        assert rollout_id not in answered_by(traffic, name)


def test_a_version_that_fails_requests_aborts_on_the_error_gate(fleet: RolloutFleet) -> None:
    fleet.add_version("4.0.0-failing", lambda p: write_failing_digits_model(p, seed=0))
    before = {name: fleet.serving(name) for name in DEVICES}
    with fleet.traffic(DEVICES, poison_share=0.05) as traffic:
        rollout_id = fleet.start_rollout(
            "4.0.0-failing", "--label", "site=lab", *THREE_WAVES, *NOT_LATENCY
        )
        code, detail = fleet.watch(rollout_id).finished()
        assert code == 1, detail["rollout"]
        assert "errors" in failed_gates(fleet.analysis(rollout_id), 0)
        fleet.wait_serving("pi-1", before["pi-1"])
        wait_answers_from(traffic, "pi-1", str(before["pi-1"]))
    tallies = traffic.tallies()
    no_failed_requests(traffic)
    # the failures the gate saw are the poisoned requests the failing model refused; the
    # old model answers them, so no other device refused any
    assert tallies["pi-1"].poisoned_refused > 0
    assert all(tallies[name].poisoned_refused == 0 for name in DEVICES[1:])
    assert list(fleet.events_of(rollout_id)) == ["pi-1"]


def test_a_wave_without_traffic_is_inconclusive_and_pauses(fleet: RolloutFleet) -> None:
    fleet.add_version("5.0.0", lambda p: write_digits_model(p, seed=2))
    rollout_id = fleet.start_rollout(
        "5.0.0", "--label", "site=lab", *THREE_WAVES, bake="min_requests=100,min=2s,max=8s"
    )
    watch = fleet.watch(rollout_id)
    paused = watch.wait(lambda d: d["rollout"]["state"] == "paused", "never paused")
    assert paused["waves"][0]["state"] == "inconclusive"
    shown = fleet.run("rollout", "status", rollout_id)
    assert shown.returncode == 3, shown.stdout + shown.stderr
    assert "paused" in shown.stdout
    assert "not enough evidence" in shown.stdout, shown.stdout
    # no data never passes, and it fails nothing either
    last = {e["gate"]: e["decision"] for e in fleet.analysis(rollout_id) if e["wave"] == 0}
    assert last["install"] == "pass"
    assert {last["latency"], last["absolute"], last["errors"]} == {"inconclusive"}
    assert rows(paused)["pi-2"] == "waiting"
    # paused: the operator decides; here, to stop it
    fleet.ok("rollout", "abort", rollout_id, "--reason", "no traffic to judge it by")
    code, detail = watch.finished()
    assert code == 1 and detail["rollout"]["state"] == "aborted"
    assert list(fleet.events_of(rollout_id)) == ["pi-1"]


def test_serve_killed_mid_bake_carries_on_and_sends_nothing_twice(fleet: RolloutFleet) -> None:
    fleet.add_version("6.0.0", lambda p: write_digits_model(p, seed=3))
    with fleet.traffic(DEVICES) as traffic:
        # a bake long enough that `status --watch` sees it whatever the host's load
        rollout_id = fleet.start_rollout(
            "6.0.0", "--label", "site=lab", "--waves", "1,100%", *NOT_LATENCY,
            bake="min_requests=100,min=10s,max=40s",
        )  # fmt: skip
        watch = fleet.watch(rollout_id)
        watch.wait(lambda d: d["waves"][0]["state"] == "baking", "wave 1 never baked")
        assert fleet.daemon is not None
        fleet.daemon.proc.kill()
        fleet.daemon.proc.wait()
        # pi-1 keeps serving the new version while nobody watches it
        wait_answers_from(traffic, "pi-1", rollout_id, more=100)
        assert watch.last()["waves"][0]["state"] == "baking"
        fleet.start_daemon()
        code, detail = watch.finished()
        assert code == 0, detail["rollout"]
        assert rows(detail) == dict.fromkeys(DEVICES, "committed")
    no_failed_requests(traffic)
    serve_log = fleet.tmp.joinpath("serve.log").read_text()
    events = fleet.events_of(rollout_id)
    for name in DEVICES:
        # accepted once (the lifecycle's first step), committed once, and never offered again
        reported = states(events[name])
        assert reported.count("downloading") == 1, (name, reported)
        assert reported.count("committed") == 1, (name, reported)
        assert serve_log.count(f"sent {rollout_id} to {name} ") == 1, name
        assert f"resent {rollout_id} to {name} " not in serve_log
        log = fleet.tmp.joinpath(name, "agent.log").read_text()
        assert f"duplicate delivery of {rollout_id}" not in log, name


def test_a_device_offline_when_its_wave_starts_is_queued_and_not_counted(
    fleet: RolloutFleet,
) -> None:
    fleet.add_version("7.0.0", lambda p: write_digits_model(p, seed=4))
    targets = ["pi-4", "pi-5", "pi-6"]
    fleet.stop_agent("pi-6")
    with fleet.traffic(["pi-4", "pi-5"]) as traffic:
        rollout_id = fleet.start_rollout(
            "7.0.0", *(a for t in targets for a in ("--device", t)), "--waves", "1,100%",
            *NOT_LATENCY,
        )  # fmt: skip
        code, detail = fleet.watch(rollout_id).finished()
        assert code == 0, detail["rollout"]
    no_failed_requests(traffic)
    second = detail["waves"][1]
    assert (second["devices"], second["queued"]) == (["pi-5"], ["pi-6"])
    # wave 2 was judged on pi-5 alone
    judged = [e for e in fleet.analysis(rollout_id) if e["wave"] == 1 and e["gate"] == "install"]
    assert judged and all(e["inputs"]["counted"] == 1 for e in judged)
    assert rows(detail) == {"pi-4": "committed", "pi-5": "committed", "pi-6": "sent"}
    # the broker kept pi-6's order: it takes it when it comes back
    fleet.start_agent("pi-6", telemetry_interval_s=0.5)
    fleet.wait_serving("pi-6", rollout_id, timeout=60)
    reported = states(fleet.events_of(rollout_id)["pi-6"])
    assert reported[-1] == "committed" and reported.count("downloading") == 1


def test_an_operator_abort_mid_rollout_sends_every_touched_device_back(
    fleet: RolloutFleet,
) -> None:
    fleet.add_version("8.0.0", lambda p: write_digits_model(p, seed=5))
    before = {name: fleet.serving(name) for name in DEVICES}
    touched, untouched = DEVICES[:3], DEVICES[3:]
    with fleet.traffic(DEVICES) as traffic:
        # a bake that would take ten minutes: the operator moves it on by hand, then stops it
        rollout_id = fleet.start_rollout(
            "8.0.0", "--label", "site=lab", *THREE_WAVES, *NOT_LATENCY,
            bake="min_requests=100,min=10m,max=20m",
        )  # fmt: skip
        watch = fleet.watch(rollout_id)
        watch.wait(lambda d: d["waves"][0]["state"] == "baking", "wave 1 never baked")
        fleet.ok("rollout", "promote", rollout_id, "--reason", "pi-1 looks fine")
        baking = watch.wait(lambda d: d["waves"][1]["state"] == "baking", "wave 2 never baked")
        assert baking["waves"][1]["devices"] == ["pi-2", "pi-3"]
        fleet.ok("rollout", "abort", rollout_id, "--reason", "changed my mind")
        code, detail = watch.finished()
        assert code == 1, detail["rollout"]
        assert "changed my mind" in detail["rollout"]["reason"]
        for name in touched:
            fleet.wait_serving(name, before[name])
            wait_answers_from(traffic, name, str(before[name]))
            assert answered_by(traffic, name).get(rollout_id, 0) > 0
    no_failed_requests(traffic)
    assert rows(detail) == {
        **dict.fromkeys(touched, "rolled_back"),
        **dict.fromkeys(untouched, "cancelled"),
    }
    assert rows(detail, "rollback") == dict.fromkeys(touched, "rolled_back")
    assert sorted(fleet.events_of(rollout_id)) == touched
    for name in untouched:
        assert fleet.serving(name) == before[name]


def test_a_late_rollback_that_no_longer_matches_is_refused(fleet: RolloutFleet) -> None:
    """The operator rolls pi-3 back while it is offline, not knowing a newer deployment is
    already queued for it: pi-3 takes the newer one first, then refuses the rollback, which
    undoes a model it no longer serves."""
    fleet.add_version("9.0.0", lambda p: write_digits_model(p, seed=6))
    fleet.add_version("9.1.0", lambda p: write_digits_model(p, seed=7))
    # pi-3 serves 9.0.0 with a model before it, so a rollback of 9.0.0 is one it would take
    fleet.ok("deploy", "digits:9.0.0", "--device", "pi-3", "--wait", "--timeout", "60")
    old = fleet.serving("pi-3")
    fleet.stop_agent("pi-3")
    deployed = json.loads(fleet.ok("deploy", "digits:9.1.0", "--device", "pi-3", "--json"))
    new = deployed[0]["deployment_id"]
    wait_until(lambda: fleet.row_state(new, "pi-3") == "sent", 30, "the deploy never sent")
    ordered = json.loads(fleet.ok("rollback", "--device", "pi-3", "--reason", "late", "--json"))
    rollback = ordered[0]["deployment_id"]
    # it undoes what pi-3 serves now (9.0.0, ``old``), back to the model before it
    assert ordered[0]["model"].startswith("digits:") and ":9." not in ordered[0]["model"]
    assert old is not None
    wait_until(lambda: fleet.row_state(rollback, "pi-3") == "sent", 30, "rollback never sent")

    fleet.start_agent("pi-3", telemetry_interval_s=0.5)
    wait_until(lambda: fleet.row_state(rollback, "pi-3") == "failed", 60, "never refused")
    refused = fleet.events_of(rollback)["pi-3"]
    assert [(e["state"], e["error_code"]) for e in refused] == [("rejected", "rollback_mismatch")]
    assert states(fleet.events_of(new)["pi-3"])[-1] == "committed"
    with fleet.traffic(["pi-3"]) as traffic:
        wait_answers_from(traffic, "pi-3", new)
    no_failed_requests(traffic)
    assert fleet.serving("pi-3") == new
