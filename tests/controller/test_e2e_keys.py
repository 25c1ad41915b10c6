"""Signing-key rotation end to end: `edgefleet serve`, a private Mosquitto, real agents.

Two devices, one stopped during `key rotate`: the online one confirms; `--finish` is refused
while the other is away, then forced; the returning device catches up on both trust updates,
in order; a deployment signed by the new key commits on both, and a manifest signed by the
old, revoked key is refused by the agents with `revoked_key`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgefleet import shared
from edgefleet.harness import (
    ControllerFleet,
    Operator,
    mosquitto_binary,
    wait_until,
    write_digits_model,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # serve and agent processes

try:
    mosquitto_binary()
except RuntimeError:  # pragma: no cover - set up by `make setup`
    pytest.skip("mosquitto is not installed", allow_module_level=True)


def _trust(fleet: ControllerFleet) -> dict[str, dict[str, Any]]:
    return {r["device"]: r for r in json.loads(fleet.ok("key", "status", "--json"))}


def _wait_trust(fleet: ControllerFleet, device: str, version: int, state: str) -> None:
    def reached() -> bool:
        row = _trust(fleet).get(device)
        return row is not None and (row["version"], row["state"]) == (version, state)

    try:
        wait_until(reached, 60, f"{device} never reached trust version {version} {state}")
    except TimeoutError:
        pytest.fail(f"{device}: {_trust(fleet)}\n{fleet.logs()}")


def _events(fleet: ControllerFleet, device: str) -> list[dict[str, Any]]:
    return json.loads(fleet.ok("events", "--device", device, "--json"))


def _agent_trust(fleet: ControllerFleet, device: str) -> dict[str, Any]:
    state = json.loads((fleet.tmp / device / "state" / "state.json").read_text())
    return state["trust"]


def test_a_key_rotation_reaches_every_device_and_the_old_key_is_refused(
    fleet: ControllerFleet,
) -> None:
    fleet.init()
    model = write_digits_model(fleet.tmp / "digits.onnx", seed=0)
    fleet.ok("model", "add", str(model), "--name", "digits", "--version", "1.0.0")
    for name in ("pi-1", "pi-2"):
        fleet.add_device(name, "rpi4")
    old_key = shared.load_private_key((fleet.home / "keys" / "controller.key").read_bytes())
    old_id = shared.key_id(old_key.public_key())
    fleet.start_daemon()
    fleet.start_agent("pi-1")
    fleet.start_agent("pi-2")
    fleet.wait_online("pi-1", "pi-2")
    fleet.agents["pi-2"]["proc"].stop()
    fleet.wait_online("pi-2", online=False)

    rotation = json.loads(fleet.ok("key", "rotate", "--json"))
    new_id = rotation["next"]
    assert (rotation["current"], rotation["devices"]) == (old_id, ["pi-1", "pi-2"])
    _wait_trust(fleet, "pi-1", 1, "confirmed")
    assert _trust(fleet)["pi-2"]["state"] == "sent"  # queued at the broker for pi-2

    refused = fleet.run("key", "rotate", "--finish")
    assert refused.returncode == 1 and "pi-2" in refused.stderr, refused.stderr
    assert [k["state"] for k in json.loads(fleet.ok("key", "list", "--json"))] == [
        "current",
        "next",
    ]
    finished = json.loads(fleet.ok("key", "rotate", "--finish", "--force", "--json"))
    assert (finished["current"], finished["retired"]) == (new_id, old_id)
    assert finished["unconfirmed"] == ["pi-2"]
    _wait_trust(fleet, "pi-1", 2, "confirmed")
    assert _agent_trust(fleet, "pi-1")["revoked"] == [old_id]

    # pi-2 comes back: its persistent session hands it both updates, in order
    fleet.start_agent("pi-2")
    _wait_trust(fleet, "pi-2", 2, "confirmed")
    trust_events = [
        (e["state"], (e["details"] or {}).get("version"))
        for e in _events(fleet, "pi-2")
        if e["deployment_id"] and e["deployment_id"].startswith("trust-")
    ]
    assert trust_events == [("trust_updated", 1), ("trust_updated", 2)]
    assert _agent_trust(fleet, "pi-2")["version"] == 2

    # signed by the new key: commits on both
    deployed = json.loads(
        fleet.ok(
            "deploy", "digits:1.0.0", "--profile", "rpi4", "--wait", "--timeout", "60", "--json"
        )
    )
    assert sorted((r["device"], r["state"]) for r in deployed) == [
        ("pi-1", "committed"),
        ("pi-2", "committed"),
    ]

    # a manifest signed by the old, revoked key, sent raw through the broker
    operator = Operator(fleet.broker.url, fleet.tmp / "operator-artifacts")
    try:
        operator.key, operator.key_id = old_key, old_id
        for name in ("pi-1", "pi-2"):
            manifest = operator.manifest(name, model, version="6.6.6", sequence=1000)
            operator.send(name, operator.deploy_payload(manifest))
    finally:
        operator.close()
    for name in ("pi-1", "pi-2"):
        wait_until(
            lambda n=name: any(e["error_code"] == "revoked_key" for e in _events(fleet, n)),
            30,
            f"{name} never refused the revoked key",
        )
        assert fleet.status()[name]["model"] == "digits:1.0.0"
