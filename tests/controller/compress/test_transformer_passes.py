"""The transformer passes on a tiny trained encoder (three int64 inputs, free sequence axis):
fusion, int4/int8 weight-only MatMulNBits, the sensitivity ranking and the accuracy-aware
int8 that keeps the most harmful nodes in float, and ``compress`` end to end."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress import (
    Candidate,
    PassFailed,
    compress,
    cosine_rows,
    fuse_transformer,
    keep_sensitive_in_float,
    quantize_int8_dynamic,
    quantize_int8_static,
    quantize_weights_nbits,
    rank_nodes,
)
from edgefleet.controller.compress._measure import open_session, run_outputs
from edgefleet.controller.compress._sensitivity import MAX_KEPT_SHARE
from edgefleet.controller.compress._transformer_passes import attention_shape
from edgefleet.shared.errors import ConfigError

from .conftest import TINY_ENCODER, Digits, Encoder, cosine_profile


def _reference(encoder: Encoder) -> Candidate:
    return Candidate("fp32", encoder.onnx, {"steps": []})


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _worst_cosine(path: Path, encoder: Encoder) -> float:
    reference = run_outputs(open_session(encoder.onnx, 1), encoder.held_out)
    return float(
        np.min(cosine_rows(run_outputs(open_session(path, 1), encoder.held_out), reference))
    )


def test_the_heads_and_hidden_size_are_read_from_the_graph(encoder: Encoder) -> None:
    assert attention_shape(encoder.onnx) == (TINY_ENCODER.heads, TINY_ENCODER.hidden)


def test_fusion_makes_contrib_ops_and_keeps_the_outputs(encoder: Encoder, tmp_path: Path) -> None:
    cand = fuse_transformer(_reference(encoder), tmp_path)
    ops = _ops(cand.path)
    assert ops["Attention"] == TINY_ENCODER.layers
    assert ops["EmbedLayerNormalization"] == 1 and ops["SkipLayerNormalization"] >= 2
    step = cand.recipe["steps"][-1]
    assert step["pass"] == "transformer_fusion" and step["opt_level"] == 0
    assert _worst_cosine(cand.path, encoder) > 0.99999
    # a free sequence axis survives: other lengths run
    session = open_session(cand.path, 1)
    for seq in (5, 31):
        feed = {n: a[:2, :seq] for n, a in encoder.held_out.feeds.items()}
        assert session.run(None, feed)[0].shape == (2, TINY_ENCODER.hidden)


def test_fusion_of_a_model_that_is_not_a_transformer(digits: Digits, tmp_path: Path) -> None:
    with pytest.raises(PassFailed, match="no transformer blocks to fuse"):
        fuse_transformer(Candidate("cnn", digits.onnx), tmp_path)


@pytest.mark.parametrize(("block", "symmetric"), [(32, True), (128, False)])
def test_int4_weights_and_embeddings(
    encoder: Encoder, tmp_path: Path, block: int, symmetric: bool
) -> None:
    cand = quantize_weights_nbits(
        _reference(encoder), tmp_path, bits=4, block_size=block, symmetric=symmetric
    )
    ops = _ops(cand.path)
    # every weight MatMul; only attention's two activation-by-activation MatMuls stay
    assert ops["MatMulNBits"] == 6 * TINY_ENCODER.layers
    assert ops["MatMul"] == 2 * TINY_ENCODER.layers
    assert ops["GatherBlockQuantized"] >= 1  # the embedding tables count
    # (a tiny model: blocks of 128 pad its 64-wide rows; the bench has real ratios)
    assert cand.path.stat().st_size < encoder.onnx.stat().st_size / 3
    step = cand.recipe["steps"][-1]
    assert (step["bits"], step["block_size"], step["symmetric"]) == (4, block, symmetric)
    assert _worst_cosine(cand.path, encoder) > 0.99


def test_int8_weight_only_leaves_embeddings_and_bad_settings(
    encoder: Encoder, tmp_path: Path
) -> None:
    cand = quantize_weights_nbits(_reference(encoder), tmp_path, bits=8, block_size=32)
    assert "GatherBlockQuantized" not in _ops(cand.path)  # 4-bit kernels only
    assert _worst_cosine(cand.path, encoder) > 0.999
    with pytest.raises(ConfigError, match="block size"):
        quantize_weights_nbits(_reference(encoder), tmp_path, block_size=48)


def test_sensitivity_ranks_every_weighted_node(encoder: Encoder, tmp_path: Path) -> None:
    ref = _reference(encoder)
    quantise = _dynamic(ref, tmp_path)
    ranking = rank_nodes(ref, encoder.calibration, "cosine", quantise)
    matmuls = [s for s in ranking if s.op_type == "MatMul"]
    assert len(matmuls) == 6 * TINY_ENCODER.layers
    errors = [s.error for s in ranking]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    assert not list(tmp_path.glob("*probe*"))  # the probes are removed


def test_the_most_harmful_nodes_are_kept_in_float(encoder: Encoder, tmp_path: Path) -> None:
    ref = _reference(encoder)
    quantise = _dynamic(ref, tmp_path)
    ranking = rank_nodes(ref, encoder.calibration, "cosine", quantise)
    # a budget nothing quantised meets: the most harmful nodes are kept, at most 3
    cand = keep_sensitive_in_float(
        ref, encoder.calibration, "cosine", quantise, ranking,
        max_drop=0.0, max_worst_drop=0.0, max_kept=3,
    )  # fmt: skip
    assert cand is not None
    kept = cand.recipe["steps"][-1]["sensitivity"]["kept_float"]
    # the most harmful first, but never an fp32 table that is a large share of the model
    small = encoder.onnx.stat().st_size * MAX_KEPT_SHARE
    assert kept == [s.node for s in ranking if s.weight_bytes <= small][:3]
    assert all(s.weight_bytes > 0 for s in ranking)
    float_matmuls = {n.name for n in onnx.load(str(cand.path)).graph.node if n.op_type == "MatMul"}
    assert set(kept) & {s.node for s in ranking if s.op_type == "MatMul"} <= float_matmuls
    # a loose budget the fully quantised model meets: nothing to keep, no extra candidate
    loose = keep_sensitive_in_float(
        ref, encoder.calibration, "cosine", quantise, ranking,
        max_drop=0.5, max_worst_drop=0.5, max_kept=3,
    )  # fmt: skip
    assert loose is None


def test_compress_an_encoder_end_to_end(encoder: Encoder, tmp_path: Path) -> None:
    profile = cosine_profile(
        ["transformer_fusion", "int8_dynamic", "int8_sensitive", "int4_weight"],
        int4_block_sizes=[32],
        int4_symmetric=[True],
        objective="size",
        budgets={"max_worst_drop": 0.05},
    )
    report = compress(
        encoder.onnx, encoder.eval_npz, profile, tmp_path, metric="cosine", latency_runs=3
    )
    names = {c.name for c in report.candidates}
    assert {"fp32", "fp32.fused", "fp32.int8dyn-pc", "fp32.fused.int8dyn",
            "fp32.int4w-b32-sym"} <= names  # fmt: skip
    assert "fp32.fused.int4w-b32-sym" not in names  # int4 goes on the unfused graph
    assert report.chosen.name == "fp32.int4w-b32-sym"  # the smallest inside the budget
    for c in report.candidates:
        assert c.metric_worst is not None and c.metric_worst <= c.metric + 1e-9
        assert c.drop_worst is not None
    assert report.reference.metric_worst == pytest.approx(1.0)
    assert report.to_dict()["chosen"]["metric_worst"] == report.chosen.metric_worst


def test_a_worst_row_budget_is_enforced(encoder: Encoder, digits: Digits, tmp_path: Path) -> None:
    profile = cosine_profile(["int4_weight"], int4_block_sizes=[256], int4_symmetric=[False])
    report = compress(
        encoder.onnx, encoder.eval_npz, profile, tmp_path, metric="cosine",
        max_worst_drop=1e-9, latency_runs=2,
    )  # fmt: skip
    int4 = next(c for c in report.candidates if c.name.startswith("fp32.int4"))
    assert [b.budget for b in int4.breaches] == ["max_worst_drop"]
    assert "worst-row drop" in int4.breaches[0].text
    assert report.chosen.name == "fp32"
    with pytest.raises(ConfigError, match="worst-row budget needs the cosine or mse"):
        compress(digits.onnx, digits.eval_npz, profile, tmp_path, max_worst_drop=0.1)


def _dynamic(ref: Candidate, out: Path):  # -> a quantise function for the sensitivity pass
    from functools import partial

    return partial(quantize_int8_dynamic, ref, out, per_channel=True)


def test_kept_nodes_can_keep_int8_weights_with_float_arithmetic(
    encoder: Encoder, tmp_path: Path
) -> None:
    ref = _reference(encoder)
    quantise = _dynamic(ref, tmp_path)
    ranking = rank_nodes(ref, encoder.calibration, "cosine", quantise)
    matmuls = [s for s in ranking if s.op_type == "MatMul"][:2]

    def compact(cand: Candidate, kept: list[str]) -> Candidate:
        return quantize_weights_nbits(
            cand, tmp_path, bits=8, block_size=128, embeddings=False, only=kept
        )

    kept_float = keep_sensitive_in_float(
        ref, encoder.calibration, "cosine", quantise, matmuls,
        max_drop=0.0, max_worst_drop=0.0, max_kept=2,
    )  # fmt: skip
    (tmp_path / "b").mkdir()
    compacted = keep_sensitive_in_float(
        ref, encoder.calibration, "cosine", _dynamic(ref, tmp_path / "b"), matmuls,
        max_drop=0.0, max_worst_drop=0.0, max_kept=2, kept_weights=compact,
    )  # fmt: skip
    assert kept_float is not None and compacted is not None
    steps = [s["pass"] for s in compacted.recipe["steps"]]
    assert steps == ["int8_dynamic", "int8_weight"]
    assert compacted.recipe["steps"][0]["sensitivity"]["kept_float"] == [s.node for s in matmuls]
    assert _ops(compacted.path)["MatMulNBits"] == 2
    assert compacted.path.stat().st_size < kept_float.path.stat().st_size


def test_static_int8_of_a_transformer_leaves_the_attention_mask_alone(
    encoder: Encoder, tmp_path: Path
) -> None:
    cand = quantize_int8_static(_reference(encoder), tmp_path, encoder.calibration)
    step = cand.recipe["steps"][-1]
    assert step["op_types"] == ["MatMul", "Gemm", "Gather"]
    assert _worst_cosine(cand.path, encoder) > 0.99
