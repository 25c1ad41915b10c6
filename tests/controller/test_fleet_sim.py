"""The fleet simulator (harness ``FleetWorkers``, ``SimDevice``) against the real thing: a
private Mosquitto, `edgefleet serve`, 20 simulated devices and 3 real agents, all enrolled
with `edgefleet device add --from`. A deploy reaches every one of them exactly once, every
row commits, and the registry agrees with what each device says it serves. And, in
process, a simulated device refuses what the agent refuses."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edgefleet import shared
from edgefleet.harness import (
    DIGITS_IO,
    ControllerFleet,
    FleetWorkers,
    SimDevice,
    SimTimings,
    mosquitto_binary,
    wait_until,
    write_digits_model,
)
from edgefleet.shared import ArtifactRef, DeployCommand, Manifest, ModelRef, SmokeTest

try:
    mosquitto_binary()
except RuntimeError:  # pragma: no cover - set up by `make setup`
    pytest.skip("mosquitto is not installed", allow_module_level=True)

SIMS, AGENTS = 20, 3


@pytest.fixture
def scale_fleet(tmp_path: Path) -> Iterator[tuple[ControllerFleet, list[FleetWorkers]]]:
    fleet = ControllerFleet(tmp_path)
    workers: list[FleetWorkers] = []
    try:
        yield fleet, workers
    finally:
        for w in workers:
            w.close()
        fleet.close()


def _enrol(fleet: ControllerFleet, names: list[str], out: str) -> list[Path]:
    csv = fleet.tmp / f"{out}.csv"
    csv.write_text("name,state_dir\n" + "".join(f"{n},{fleet.tmp}/state/{n}\n" for n in names))
    fleet.ok("device", "add", "--from", str(csv), "--out-dir", str(fleet.tmp / out),
             "--profile", "rpi4", "--label", "bench=sim")  # fmt: skip
    return sorted((fleet.tmp / out).glob("*.toml"))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_deploy_reaches_simulated_and_real_devices_once_each(
    scale_fleet: tuple[ControllerFleet, list[FleetWorkers]],
) -> None:
    fleet, workers = scale_fleet
    fleet.init()
    model = write_digits_model(fleet.tmp / "digits.onnx", seed=0)
    fleet.ok("model", "add", str(model), "--name", "digits", "--version", "1.0.0")
    sims = _enrol(fleet, [f"sim-{i:02d}" for i in range(SIMS)], "sim-configs")
    agents = _enrol(fleet, [f"agent-{i}" for i in range(AGENTS)], "agent-configs")
    fleet.start_daemon()
    quick = SimTimings(downloading=0.02, verifying=0.0, loading=0.01, testing=0.0, switching=0.01)
    workers.append(FleetWorkers("sim", sims, processes=2, workdir=fleet.tmp / "sim-workers",
                                options={"timings": quick}).start(timeout=60))  # fmt: skip
    every_second = {"telemetry_interval_s": 1.0}
    workers.append(FleetWorkers("agents", agents, processes=1, workdir=fleet.tmp / "agents",
                                options=every_second).start(timeout=60))  # fmt: skip
    names = [p.stem for p in sims + agents]
    wait_until(lambda: all(s["online"] for s in fleet.status().values()), 60, "not all online")

    out = fleet.ok("deploy", "digits:1.0.0", "--label", "bench=sim", "--json")
    rows = json.loads(out)
    dep = rows[0]["deployment_id"]
    assert sorted(r["device"] for r in rows) == sorted(names)

    def settled() -> dict[str, dict[str, Any]] | None:
        found = fleet.status()
        done = all(
            s["state"] == "committed" and s["serving_deployment_id"] == dep for s in found.values()
        )
        return found if done else None

    status = wait_until(settled, 90, "not every device committed and serving")

    said: dict[str, Any] = {}
    for w in workers:
        said.update(w.report())
    assert sorted(said) == sorted(names)
    for name, device in said.items():
        received = [r for r in device["received"] if r[0] == dep]
        assert len(received) == 1, f"{name} received {dep} {len(received)} times"
        assert received[0][3] == "deploy" and received[0][1] == 1  # its first sequence
        assert device["serving"] == dep == status[name]["serving_deployment_id"]
        assert status[name]["serving"] == "digits:1.0.0/fp32"
    assert fleet.events("sim-00") == fleet.events("agent-0") == [
        "downloading", "verifying", "loading", "testing", "switching", "committed",
    ]  # fmt: skip


# -- a simulated device on its own: what it refuses ----------------------------------------


class _Device:
    """A SimDevice with its sends recorded and its timers run on demand."""

    def __init__(self, key: Any) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.timers: list[Any] = []
        self.sim = SimDevice(
            "pi-1", shared.trusted_keyring([key.public_key()]), profile="rpi4",
            prefix=shared.DEFAULT_PREFIX, send=lambda t, p, q, r: self.sent.append((t, p)),
            later=lambda s, call: self.timers.append(call), timings=SimTimings(),
            rng=random.Random(0),
        )  # fmt: skip

    def run_timers(self) -> None:
        for _ in range(20):  # a deployment has five steps
            if not self.timers:
                return
            self.timers.pop(0)()

    def events(self) -> list[tuple[str, str | None]]:
        found = [shared.decode(p) for t, p in self.sent if t.endswith("/events")]
        return [(e.state.value, e.error_code) for e in found]  # type: ignore[union-attr]


def _command(key: Any, **changes: Any) -> bytes:
    now = datetime.now(UTC)
    fields: dict[str, Any] = dict(
        deployment_id="dep-1", device_id="pi-1", sequence=1, issued_at=now,
        expires_at=now + timedelta(hours=1), key_id=shared.key_id(key.public_key()),
        model=ModelRef(name="digits", version="1.0.0"),
        artifact=ArtifactRef(sha256="a" * 64, size=10, url="sha256/aa/" + "a" * 64),
        io=DIGITS_IO, smoke_test=SmokeTest(inputs={}, outputs={}),
    )  # fmt: skip
    fields.update(changes)
    manifest = Manifest(**fields)
    return shared.encode(DeployCommand(signed=shared.sign(shared.encode_document(manifest), key)))


@pytest.mark.parametrize(
    ("case", "changes", "code"),
    [
        ("another device's", {"device_id": "pi-2"}, "wrong_device"),
        ("expired", {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}, "expired"),
    ],
)
def test_a_simulated_device_refuses_what_the_agent_refuses(
    case: str, changes: dict[str, Any], code: str
) -> None:
    key = shared.generate_private_key()
    device = _Device(key)
    device.sim.on_command(_command(key, **changes))
    device.run_timers()
    assert device.events() == [("rejected", code)], case
    assert device.sim.active is None and device.sim.last_sequence == 0


def test_a_simulated_device_refuses_a_stranger_and_a_replay_and_ignores_a_redelivery() -> None:
    key, stranger = shared.generate_private_key(), shared.generate_private_key()
    device = _Device(key)
    device.sim.on_command(_command(stranger))
    assert device.events() == [("rejected", "unknown_key")]

    device.sent.clear()
    first = _command(key)
    device.sim.on_command(first)
    device.run_timers()
    assert [s for s, _ in device.events()] == [
        "downloading", "verifying", "loading", "testing", "switching", "committed",
    ]  # fmt: skip
    assert device.sim.active is not None and device.sim.active.deployment_id == "dep-1"

    device.sent.clear()
    device.sim.on_command(first)  # the QoS 1 redelivery: noted, not run again
    device.sim.on_command(_command(key, deployment_id="dep-2"))  # sequence 1 again: a replay
    assert device.events() == [("rejected", "replayed_sequence")]
    # every command is noted, the stranger's (unreadable: no id) too
    assert [r.deployment_id for r in device.sim.received] == ["", "dep-1", "dep-1", "dep-2"]
    assert len({r.sha256 for r in device.sim.received[1:3]}) == 1  # the same bytes twice
