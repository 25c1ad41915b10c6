"""A rollout on this machine with the real controller, end to end.

In a temporary EDGEFLEET_HOME: train two small CNNs on scikit-learn's digits with torch
and export them to ONNX; start a private Mosquitto; `edgefleet init`, `model add` both
versions, `compress` v2 for the x86-edge profile, `device add` three devices (rpi4, rpi5,
x86-edge); start `edgefleet serve` and
three agents; `edgefleet deploy` v1 then v2 with --wait; print `edgefleet status`;
classify held-out digits through two agents' inference endpoints. Then a staged rollout
with gates under steady client load: a small MLP (1.0.0) is deployed, and `edgefleet
rollout start` sends 2.0.0, which answers the same but about 3x slower per request; the
latency gate compares each device with its own previous model, fails wave 1, and the
device goes back to 1.0.0 by a signed rollback order, without a failed client request.
Shut everything down. Run: make demo
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np

from edgefleet.harness import (
    TRAIN_ROWS,
    ClientTraffic,
    ControllerFleet,
    digits_images,
    train_cnn,
    wait_until,
    write_digits_model,
    write_slow_digits_model,
)

DEVICES = {"kitchen-pi": "rpi4", "garage-pi": "rpi5", "edge-box": "x86-edge"}
VERSIONS = {  # v2 is wider and trained longer
    "1.0.0": {"seed": 1, "epochs": 2, "width": 8, "hidden": 32},
    "2.0.0": {"seed": 2, "epochs": 6, "width": 16, "hidden": 64},
}


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def export_digits(path: Path, **train: int) -> Path:
    """Train a digits CNN and write it as ONNX: input `input` [batch,1,8,8], output `probs`."""
    import torch

    torch.set_num_threads(4)
    model = torch.nn.Sequential(train_cnn(**train), torch.nn.Softmax(dim=1)).eval()
    example = torch.from_numpy(digits_images()[0][:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["probs"],
            dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def main() -> int:
    t_start = time.monotonic()
    fleet = ControllerFleet()
    try:
        work = fleet.tmp
        step("training two digit CNNs with torch (scikit-learn digits) and exporting to ONNX")
        x, y = digits_images()
        np.savez(work / "sample.npz", input=x[:8])
        models = {}
        for version, train in VERSIONS.items():
            t0 = time.monotonic()
            models[version] = export_digits(work / f"digits-{version}.onnx", **train)
            print(f"  digits {version}: {train}  ({time.monotonic() - t0:.1f} s)")

        step(f"edgefleet init in {fleet.home} (private Mosquitto on {fleet.broker.url})")
        fleet.init()
        for version, path in models.items():
            fleet.ok("model", "add", str(path), "--name", "digits", "--version", version,
                     "--sample", str(work / "sample.npz"))  # fmt: skip
        print(fleet.ok("model", "list"), end="")
        step("edgefleet compress digits:2.0.0 --profile x86-edge (each candidate vs fp32)")
        np.savez(work / "eval.npz", inputs=x[TRAIN_ROWS:], labels=y[TRAIN_ROWS:])
        eval_npz = str(work / "eval.npz")
        print(fleet.ok("compress", "digits:2.0.0", "--profile", "x86-edge", "--data", eval_npz,
                       "--latency-runs", "50"), end="")  # fmt: skip
        for name, profile in DEVICES.items():
            fleet.add_device(name, profile, "fleet=demo")
        print(fleet.ok("device", "list"), end="")

        step("starting edgefleet serve and three agents")
        fleet.start_daemon()
        for name in DEVICES:
            fleet.start_agent(name)
        wait_until(
            lambda: all(fleet.status()[n]["online"] for n in DEVICES), 30, "agents not online"
        )
        print(f"  daemon on 127.0.0.1:{fleet.http_port}; agents online: {', '.join(DEVICES)}")

        for version in VERSIONS:
            step(f"edgefleet deploy digits:{version} --label fleet=demo --wait")
            t0 = time.monotonic()
            result = fleet.run("deploy", f"digits:{version}", "--label", "fleet=demo",
                               "--wait", "--timeout", "60")  # fmt: skip
            print(result.stdout, end="")
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                raise RuntimeError(f"deploy of digits:{version} failed")
            print(f"  all three committed in {time.monotonic() - t0:.1f} s")

        step("sending 50 one-digit requests to each agent; each reports its own latency")
        with httpx.Client(timeout=10) as client:
            for name in DEVICES:
                for row in x[TRAIN_ROWS : TRAIN_ROWS + 50]:
                    client.post(
                        f"{fleet.url(name)}/v1/infer", json={"inputs": {"input": [row.tolist()]}}
                    ).raise_for_status()
        step("edgefleet status (p95: the inference latency each device measured)")
        wait_until(
            lambda: all(
                str(s["model"]).startswith("digits:2.0.0") and s["p95_ms"] is not None
                for n, s in fleet.status().items()
            ),
            20,
            "devices reported no latency for digits:2.0.0",
        )
        print(fleet.ok("status"), end="")

        held_out = len(x) - TRAIN_ROWS
        for name in ("kitchen-pi", "edge-box"):
            step(f"classifying {held_out} held-out digits through {name}'s inference endpoint")
            r = httpx.post(
                f"{fleet.url(name)}/v1/infer",
                json={"inputs": {"input": x[TRAIN_ROWS:].tolist()}},
                timeout=30,
            )
            r.raise_for_status()
            probs = np.asarray(r.json()["outputs"]["probs"])
            accuracy = float((probs.argmax(axis=1) == y[TRAIN_ROWS:]).mean())
            model = r.headers.get("X-Edgefleet-Model", "?")
            print(f"  served by {model}: accuracy {accuracy:.1%}")
        staged_rollout(fleet, work)
    except BaseException:
        print("\ndemo failed; last lines of each process log:", file=sys.stderr)
        print(fleet.logs(), file=sys.stderr)
        raise
    finally:
        step("shutting down (SIGTERM to agents and daemon, then the broker)")
        fleet.close()
    print(f"done in {time.monotonic() - t_start:.0f} s")
    return 0


def staged_rollout(fleet: ControllerFleet, work: Path) -> None:
    """A gated rollout of a slower version under client load, rolled back by its gates."""
    step("a staged rollout with gates: mlp 1.0.0 serves under steady client load")
    fleet.ok("model", "add", str(write_digits_model(work / "mlp-1.onnx")), "--name", "mlp",
             "--version", "1.0.0")  # fmt: skip
    slow = write_slow_digits_model(work / "mlp-2.onnx")  # the same answers, ~3x the work
    fleet.ok("model", "add", str(slow), "--name", "mlp", "--version", "2.0.0")
    fleet.ok("deploy", "mlp:1.0.0", "--label", "fleet=demo", "--wait", "--timeout", "60")
    urls = {name: fleet.url(name) for name in DEVICES}
    with ClientTraffic(urls, rate_per_s=30.0) as traffic:
        traffic.wait_answered(150, timeout=60)  # a baseline for each device's own comparison
        args = ["rollout", "start", "mlp:2.0.0", "--label", "fleet=demo", "--waves", "1,100%",
                "--bake", "min_requests=100,min=5s,max=60s", "--reason", "the demo"]  # fmt: skip
        step("edgefleet " + " ".join(args))
        started = json.loads(fleet.ok(*args, "--json"))
        rollout_id = started["rollout"]["rollout_id"]
        print(f"  rollout {rollout_id}: wave 1 is {started['waves'][0]['devices']}")
        t0 = time.monotonic()

        def state() -> str:
            shown = json.loads(fleet.run("rollout", "status", rollout_id, "--json").stdout)
            return str(shown["rollout"]["state"])

        wait_until(lambda: state() in ("aborted", "completed", "paused"), 180, "rollout")
        print(f"  {state()} after {time.monotonic() - t0:.0f} s")
        step(f"edgefleet rollout status {rollout_id}")
        print(fleet.run("rollout", "status", rollout_id).stdout, end="")
        step(f"edgefleet rollout analysis {rollout_id}")
        print(fleet.run("rollout", "analysis", rollout_id).stdout, end="")
        time.sleep(1.0)  # a last second of requests on the model the device went back to
    failed = sum(f for _, f in traffic.counts().values())
    answered = sum(ok for ok, _ in traffic.counts().values())
    print(f"  client requests during the rollout: {answered} answered, {failed} failed")


if __name__ == "__main__":
    sys.exit(main())
