"""A transformer end to end: a tiny encoder (three int64 inputs, free sequence axis) added,
compressed for an arm64 board that allows fusion, int8 and int4, deployed by `edgefleet
serve` to a real agent, and served there, by JSON and by an .npz body, within the variant's
own smoke-test tolerance and the worst-row cosine budget."""

from __future__ import annotations

import io
import json
import sqlite3

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.controller.compress import cosine_rows
from edgefleet.harness import ControllerFleet, made_up_sentences, mosquitto_binary
from edgefleet.shared import SmokeTest

from .conftest import TINY_ENCODER, Encoder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # serve and agent processes

try:
    mosquitto_binary()
except RuntimeError:  # pragma: no cover - set up by `make setup`
    pytest.skip("mosquitto is not installed", allow_module_level=True)

BOARD = """\
name = "board"
arch = "arm64"
isa_features = ["neon", "dotprod"]
cores = 2
ram_mb = 1024

[runtime]
intra_op_threads = 1
inter_op_threads = 1

[budgets]
max_size_bytes = 100_000_000
max_latency_ms = 1000.0
max_accuracy_drop = 0.01
max_worst_drop = 0.03

[compression]
passes = ["transformer_fusion", "int8_dynamic", "int4_weight"]
objective = "size"
int4_block_sizes = [32]
int4_symmetric = [true]
"""


def test_an_encoder_compressed_deployed_and_served(
    fleet: ControllerFleet, encoder: Encoder
) -> None:
    fleet.init()
    (fleet.home / "profiles" / "board.toml").write_text(BOARD)
    sample = fleet.tmp / "sample.npz"
    np.savez(sample, **made_up_sentences(4, 12, TINY_ENCODER.vocab, seed=3))  # type: ignore[arg-type]
    fleet.ok("model", "add", str(encoder.onnx), "--name", "encoder", "--version", "1.0",
             "--sample", str(sample))  # fmt: skip
    fleet.add_device("pi-1", "board")

    result = fleet.run(
        "compress", "encoder:1.0", "-p", "board", "--data", str(encoder.eval_npz),
        "--metric", "cosine", "--latency-runs", "5", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    chosen = report["chosen"]
    assert chosen["name"] == "fp32.int4w-b32-sym", [c["name"] for c in report["candidates"]]
    assert chosen["drop_worst"] <= 0.03 and chosen["metric_worst"] <= chosen["metric"]
    assert {"fp32.fused", "fp32.fused.int8dyn"} <= {c["name"] for c in report["candidates"]}
    with sqlite3.connect(fleet.home / "registry.db") as conn:
        sha, smoke_text = conn.execute(
            "SELECT artifact_sha256, smoke_test FROM variant WHERE name = 'board'"
        ).fetchone()
    smoke = SmokeTest.model_validate_json(smoke_text)
    assert set(smoke.inputs) == {"input_ids", "attention_mask", "token_type_ids"}

    fleet.start_daemon()
    fleet.start_agent("pi-1")
    fleet.wait_online("pi-1")
    rows = json.loads(
        fleet.ok("deploy", "encoder:1.0", "--device", "pi-1", "--wait", "--timeout", "90", "--json")
    )
    assert [r["state"] for r in rows] == ["committed"], (rows, fleet.logs())
    meta = httpx.get(f"{fleet.url('pi-1')}/v1/model").json()
    assert (meta["name"], meta["variant"]) == ("encoder", "board")

    # sentences of another length than the eval data's: the free sequence axis is served
    feeds = made_up_sentences(6, 20, TINY_ENCODER.vocab, seed=11)
    stored = fleet.home / "artifacts" / "sha256" / sha[:2] / sha
    local = ort.InferenceSession(str(stored), providers=["CPUExecutionProvider"])
    expected = local.run(None, feeds)[0]
    fp32 = ort.InferenceSession(str(encoder.onnx), providers=["CPUExecutionProvider"])
    reference = fp32.run(None, feeds)[0]

    by_json = httpx.post(
        f"{fleet.url('pi-1')}/v1/infer",
        json={"inputs": {name: a.tolist() for name, a in feeds.items()}},
        timeout=30,
    )
    assert by_json.status_code == 200, by_json.text
    served = np.asarray(by_json.json()["outputs"]["embedding"], np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **feeds)  # type: ignore[arg-type]
    by_npz = httpx.post(
        f"{fleet.url('pi-1')}/v1/infer",
        content=buffer.getvalue(),
        headers={"Content-Type": "application/x-npz"},
        timeout=30,
    )
    assert by_npz.status_code == 200, by_npz.text
    served_npz = np.load(io.BytesIO(by_npz.content))

    for got in (served, served_npz):
        assert np.allclose(got, expected, rtol=smoke.rtol, atol=smoke.atol)
        assert float(np.min(cosine_rows(got, reference))) >= 1 - 0.03
