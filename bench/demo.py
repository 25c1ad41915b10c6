"""A rollout on this machine, end to end: a private Mosquitto, an artifact server and three
agents with different profiles; deploy v1, then v2; show what runs where and how fast;
classify real digits through one agent's inference endpoint.

Until the controller lands, the operator's side is played by the shared protocol package
(the same code the tests use). Run: make demo
"""

from __future__ import annotations

import sys
import time

import httpx
import numpy as np

from _fleet import LocalFleet, digits, write_digits_model

DEVICES = {"kitchen-pi": "rpi4", "garage-pi": "rpi5", "edge-box": "x86-edge"}


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def rollout(fleet: LocalFleet, model, version: str) -> None:
    manifests = {d: fleet.operator.deploy(d, model, version=version) for d in DEVICES}
    for device, m in manifests.items():
        event = fleet.observer.wait_event(m.deployment_id, "committed", timeout=60)
        print(
            f"  {device:<11} committed {version}  on-device p50 {event.details['p50_ms']:.3f} ms"
            f"  p95 {event.details['p95_ms']:.3f} ms"
        )


def main() -> int:
    step("training two digit classifiers (scikit-learn digits) and exporting them to ONNX")
    fleet = LocalFleet()
    try:
        v1 = write_digits_model(fleet.workdir / "digits-1.onnx", seed=1, hidden=16)
        v2 = write_digits_model(fleet.workdir / "digits-2.onnx", seed=2, hidden=48)
        step(f"starting Mosquitto on 127.0.0.1:{fleet.broker.port} and three agents")
        agents = {
            d: fleet.agent(d, profile=p, telemetry_interval_s=2.0) for d, p in DEVICES.items()
        }
        for a in agents.values():
            fleet.start(a)
            a.wait_serving()
            print(f"  {a.device_id:<11} online, inference on {a.url}")
        step("deploying digits 1.0.0 (signed manifests over MQTT)")
        rollout(fleet, v1, "1.0.0")
        step("deploying digits 2.0.0 while the devices keep serving")
        rollout(fleet, v2, "2.0.0")
        time.sleep(2.5)  # one telemetry interval
        step("fleet status")
        print(f"  {'device':<11} {'profile':<9} {'online':<7} {'model':<20} {'previous':<20}")
        for device, profile in DEVICES.items():
            s = fleet.observer.status(device)
            print(
                f"  {device:<11} {profile:<9} {s.online!s:<7} {s.active.model!s:<20} "
                f"{str(s.previous.model) if s.previous else '-':<20}"
            )
        step("classifying 297 held-out digits through kitchen-pi's inference endpoint")
        x, y = digits()
        r = httpx.post(
            f"{agents['kitchen-pi'].url}/v1/infer",
            json={"inputs": {"input": x[1500:].tolist()}},
            timeout=30,
        )
        r.raise_for_status()
        probs = np.asarray(r.json()["outputs"]["probs"])
        accuracy = float((probs.argmax(axis=1) == y[1500:]).mean())
        print(f"  served by {r.headers['X-Edgefleet-Model']}: accuracy {accuracy:.1%}")
        step("shutting down")
    finally:
        fleet.close()
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
