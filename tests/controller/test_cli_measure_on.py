"""`edgefleet compress --measure-on DEVICE` end to end: a private Mosquitto, `edgefleet serve`
and a real agent as subprocesses. The device's own benchmark figures decide the variant; an
unknown, offline or unreachable device is refused before anything is stored or recorded; and
a quantised variant that `compress` chose is deployed, passes the device's smoke test, serves."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgefleet.harness import digits, free_port, infer_digits, wait_until, write_digits_model

from .conftest import files_under, sqlite_snapshot
from .test_e2e_serve import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # serve and agent processes

RUNS = ("--latency-runs", "5")
# graph_opt and int8_dynamic only, and budgets every candidate meets: the device's latency
# alone decides
LAB_PROFILE = """\
name = "lab"
arch = "x86_64"
isa_features = ["avx2", "avx-vnni"]
cores = 2
ram_mb = 1024

[runtime]
intra_op_threads = 1
inter_op_threads = 1

[budgets]
max_size_bytes = 100_000_000
max_latency_ms = 1000.0
max_accuracy_drop = 0.5

[compression]
passes = ["graph_opt", "int8_dynamic"]
"""


class Lab(Fleet):
    """A fleet whose home has the `lab` profile, the digits MLP and its eval.npz."""

    def setup_lab(self, devices: dict[str, str]) -> None:
        self.init()
        (self.home / "profiles" / "lab.toml").write_text(LAB_PROFILE)
        model = write_digits_model(self.tmp / "digits.onnx", seed=0)
        self.ok("model", "add", str(model), "--name", "digits", "--version", "1.0.0")
        x, y = digits()
        self.eval_npz = self.tmp / "eval.npz"
        np.savez(self.eval_npz, inputs=x[1500:], labels=y[1500:])
        for name, profile in devices.items():
            self.add_device(name, profile)

    def compress(self, *args: str) -> Any:
        return self.run(
            "compress", "digits:1.0.0", "-p", "lab", "--data", str(self.eval_npz), *RUNS, *args
        )

    def registry(self) -> dict[str, list[tuple[Any, ...]]]:
        """What the command could have written: not the running daemon's own heartbeat."""
        tables = sqlite_snapshot(self.home / "registry.db")
        tables.pop("daemon_heartbeat", None)
        return tables

    def stored(self) -> list[str]:
        return files_under(self.home / "artifacts")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    f = Lab(tmp_path)
    try:
        yield f
    finally:
        f.close()


def _benchmarked(lab: Lab, device: str) -> dict[str, dict[str, Any]]:
    events = json.loads(lab.ok("events", "--device", device, "--json"))
    return {e["details"]["model"]: e["details"] for e in events if e["state"] == "benchmarked"}


def test_the_devices_figures_choose_the_variant(lab: Lab) -> None:
    lab.setup_lab({"box-1": "lab"})
    lab.start_daemon()
    lab.start_agent("box-1")
    lab.wait_online("box-1")
    before = lab.stored()

    result = lab.compress("--measure-on", "box-1", "--measure-timeout", "60", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["measured_on"] == "box-1"
    names = [c["name"] for c in report["candidates"]]
    # the reference, graph optimisation, and int8 dynamic with per-channel weights off and on
    assert names[0] == "fp32" and len(names) == 4 and report["skipped"] == []

    # every latency in the report is the one box-1 reported for that candidate
    seen = wait_until(
        lambda: len(found := _benchmarked(lab, "box-1")) == len(names) and found,
        20,
        "the daemon did not record box-1's benchmarks",
    )
    for c in report["candidates"]:
        on_device = seen[f"digits:1.0.0/{c['name']}"]
        assert (c["latency_ms_p50"], c["latency_ms_p95"]) == (
            on_device["p50_ms"],
            on_device["p95_ms"],
        )
        assert on_device["runs"] == 5
        assert c["local_latency_ms_p50"] > 0 and c["local_latency_ms_p95"] > 0
    fastest = min(report["candidates"], key=lambda c: (c["latency_ms_p50"], c["size_bytes"]))
    assert report["chosen"]["name"] == fastest["name"]

    # recorded as the profile's variant, with where its latency came from
    with sqlite3.connect(lab.home / "registry.db") as conn:
        rows = conn.execute("SELECT name, artifact_sha256, metrics FROM variant").fetchall()
    (variant,) = [r for r in rows if r[0] == "lab"]
    sha = report["variant"]["sha256"]
    assert variant[1] == sha
    metrics = json.loads(variant[2])
    assert metrics["measured_on"] == "box-1"
    assert metrics["latency_ms_p50"] == report["chosen"]["latency_ms_p50"]

    # of the candidates sent to box-1, only the chosen one stays in the store
    chosen = f"sha256/{sha[:2]}/{sha}"
    assert lab.stored() == sorted({*before, chosen})

    # box-1 was only measuring: it still serves nothing
    assert lab.status()["box-1"]["model"] is None

    # the table says where the latency came from
    again = lab.compress("--measure-on", "box-1")
    assert again.returncode == 0, again.stderr
    assert "latency measured on box-1" in again.stdout and "box-1 p50 ms" in again.stdout
    assert "recorded digits:1.0.0/lab" in again.stdout


def _refused(lab: Lab, device: str, code: int, words: str) -> None:
    rows_before, files_before = lab.registry(), lab.stored()
    result = lab.compress("--measure-on", device, "--measure-timeout", "20")
    assert result.returncode == code, result.stderr
    assert f"error: {words}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert lab.registry() == rows_before
    assert lab.stored() == files_before


def test_an_unknown_device_is_refused(lab: Lab) -> None:
    lab.setup_lab({"box-1": "lab"})
    _refused(lab, "nope", 2, "unknown device 'nope'")


def test_a_device_of_another_profile_is_refused(lab: Lab) -> None:
    lab.setup_lab({"pi-1": "rpi4"})
    _refused(lab, "pi-1", 2, "device pi-1 has profile rpi4, not lab")


def test_an_offline_device_is_refused(lab: Lab) -> None:
    lab.setup_lab({"box-1": "lab"})
    lab.start_daemon()
    _refused(lab, "box-1", 1, "device box-1 is offline (it has never connected)")

    agent = lab.start_agent("box-1")
    lab.wait_online("box-1")
    agent.stop()
    lab.wait_online("box-1", online=False)
    _refused(lab, "box-1", 1, "device box-1 is offline")


def test_an_unreachable_broker_is_refused(lab: Lab) -> None:
    lab.setup_lab({"box-1": "lab"})
    lab.env["EDGEFLEET_BROKER_URL"] = f"mqtt://127.0.0.1:{free_port()}"
    _refused(lab, "box-1", 1, "cannot reach the broker at mqtt://127.0.0.1:")


def test_without_the_artifact_server_the_device_says_why(lab: Lab) -> None:
    lab.setup_lab({"box-1": "lab"})
    lab.start_agent("box-1")  # no `edgefleet serve`: box-1 cannot fetch the candidates
    wait_until(lambda: "connected to broker" in lab.agents["box-1"]["proc"].text(), 20, "no agent")
    _refused(lab, "box-1", 1, "device box-1 could not measure the fp32 reference: download")


# int8 static only, the smallest wins: whatever is chosen is a quantised file, whose outputs
# are not the fp32 model's to the smoke test's default tolerance
SHRINK_PROFILE = LAB_PROFILE.replace('name = "lab"', 'name = "shrink"').replace(
    'passes = ["graph_opt", "int8_dynamic"]', 'passes = ["int8_static"]\nobjective = "size"'
)


def test_a_quantised_variant_passes_the_devices_smoke_test_and_serves(lab: Lab) -> None:
    lab.setup_lab({})
    (lab.home / "profiles" / "shrink.toml").write_text(SHRINK_PROFILE)
    lab.add_device("box-1", "shrink")
    result = lab.run(
        "compress", "digits:1.0.0", "-p", "shrink", "--data", str(lab.eval_npz), *RUNS, "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["chosen"]["recipe"]["steps"][-1]["pass"] == "int8_static"
    with sqlite3.connect(lab.home / "registry.db") as conn:
        (smoke,) = conn.execute("SELECT smoke_test FROM variant WHERE name = 'shrink'").fetchone()
    # room for another CPU's int8 kernels: twice the gap between the fused kernels and plain
    # QDQ arithmetic here, which is nothing when only the weights are int8 (as static int8
    # of a graph without convolutions now does) and the arithmetic stays float
    assert json.loads(smoke)["atol"] >= 1e-4

    lab.start_daemon()
    lab.start_agent("box-1")
    lab.wait_online("box-1")
    rows = json.loads(
        lab.ok("deploy", "digits:1.0.0", "--device", "box-1", "--wait", "--timeout", "60", "--json")
    )
    assert [r["state"] for r in rows] == ["committed"], rows
    meta = httpx.get(f"{lab.url('box-1')}/v1/model").json()
    assert (meta["name"], meta["version"], meta["variant"]) == ("digits", "1.0.0", "shrink")

    # the device classifies the held-out digits with the quantised model
    x, y = digits()
    probs = np.asarray(infer_digits(lab.url("box-1"), x[1500:1600])["outputs"]["probs"])
    assert (probs.argmax(axis=1) == y[1500:1600]).mean() > 0.8
