"""Each compression pass on the digits CNN: a model ONNX Runtime loads, of the expected
kind, with top-1 close to the fp32 reference on the held-out digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress import (
    Candidate,
    PassFailed,
    convert_fp16,
    distill,
    export_onnx,
    graph_optimize,
    prune_channels,
    quantize_int8_dynamic,
    quantize_int8_static,
    top1,
)
from edgefleet.controller.compress._measure import open_session, run_outputs
from edgefleet.controller.compress._torch_passes import count_parameters
from edgefleet.harness import build_cnn
from edgefleet.shared.errors import ConfigError

from .conftest import Digits


def _top1(path: Path, digits: Digits) -> float:
    outputs = run_outputs(open_session(path, 1), digits.held_out)
    assert digits.held_out.labels is not None
    return top1(outputs, digits.held_out.labels)


def _reference(digits: Digits) -> Candidate:
    return Candidate("fp32", digits.onnx, {"steps": []})


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def fp32_top1(digits: Digits) -> float:
    value = _top1(digits.onnx, digits)
    assert value > 0.9  # the fixture model is worth compressing
    return value


def test_graph_optimisation_is_portable_and_lossless(
    digits: Digits, tmp_path: Path, fp32_top1: float
) -> None:
    cand = graph_optimize(_reference(digits), tmp_path, "basic")
    assert cand.recipe == {"steps": [{"pass": "graph_opt", "level": "basic"}]}
    assert _top1(cand.path, digits) == fp32_top1
    with pytest.raises(ConfigError, match="basic or extended"):
        graph_optimize(_reference(digits), tmp_path, "all")  # type: ignore[arg-type]


def test_int8_dynamic(digits: Digits, tmp_path: Path, fp32_top1: float) -> None:
    cand = quantize_int8_dynamic(_reference(digits), tmp_path)
    assert "ConvInteger" in _ops(cand.path) or "MatMulInteger" in _ops(cand.path)
    assert cand.path.stat().st_size < digits.onnx.stat().st_size / 3
    assert _top1(cand.path, digits) >= fp32_top1 - 0.02


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_int8_static_qdq(
    digits: Digits, tmp_path: Path, fp32_top1: float, method: str, per_channel: bool
) -> None:
    cand = quantize_int8_static(
        _reference(digits), tmp_path, digits.calibration, method=method, per_channel=per_channel
    )  # type: ignore[arg-type]
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(cand.path)
    step = cand.recipe["steps"][-1]
    assert (step["calibration"], step["per_channel"]) == (method, per_channel)
    assert 0 < step["calibration_rows"] <= len(digits.calibration)
    assert cand.path.stat().st_size < digits.onnx.stat().st_size / 3
    assert _top1(cand.path, digits) >= fp32_top1 - 0.02


def test_int8_static_reduce_range(digits: Digits, tmp_path: Path, fp32_top1: float) -> None:
    cand = quantize_int8_static(_reference(digits), tmp_path, digits.calibration, reduce_range=True)
    assert cand.recipe["steps"][-1]["reduce_range"] is True
    assert _top1(cand.path, digits) >= fp32_top1 - 0.03


def test_int8_static_unknown_calibration(digits: Digits, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown calibration method 'kl'"):
        quantize_int8_static(_reference(digits), tmp_path, digits.calibration, method="kl")  # type: ignore[arg-type]


def test_fp16(digits: Digits, tmp_path: Path, fp32_top1: float) -> None:
    cand = convert_fp16(_reference(digits), tmp_path)
    weights = onnx.load(str(cand.path)).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    assert cand.path.stat().st_size < digits.onnx.stat().st_size * 0.6
    assert _top1(cand.path, digits) >= fp32_top1 - 0.01


def test_a_pass_on_a_broken_model_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(PassFailed, match="graph optimisation of bad failed"):
        graph_optimize(Candidate("bad", tmp_path / "bad.onnx"), tmp_path)


def test_pruning_removes_channels_and_keeps_accuracy(
    digits: Digits, tmp_path: Path, fp32_top1: float
) -> None:
    pruned = prune_channels(digits.module, digits.calibration, ratio=0.5, epochs=10, seed=0)
    assert count_parameters(pruned) < count_parameters(digits.module) / 3
    conv = pruned[0]
    assert conv.out_channels == digits.module[0].out_channels // 2  # dense, smaller kernels
    assert pruned[-1].out_features == 10  # the output layer keeps every class
    cand = export_onnx(
        pruned, digits.calibration.inputs, tmp_path / "p.onnx", input_name="input", name="p"
    )
    assert _top1(cand.path, digits) >= fp32_top1 - 0.03


def test_pruning_is_reproducible_with_a_seed(digits: Digits) -> None:
    a = prune_channels(digits.module, digits.calibration, ratio=0.5, epochs=2, seed=3)
    b = prune_channels(digits.module, digits.calibration, ratio=0.5, epochs=2, seed=3)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert np.array_equal(wa.numpy(), wb.numpy()), name


def test_pruning_without_labels_matches_the_original(digits: Digits) -> None:
    unlabelled = type(digits.calibration).single("input", digits.calibration.inputs, None)
    pruned = prune_channels(digits.module, unlabelled, ratio=0.25, epochs=2, seed=0)
    assert count_parameters(pruned) < count_parameters(digits.module)


def test_distillation_into_a_smaller_student(
    digits: Digits, tmp_path: Path, fp32_top1: float
) -> None:
    student = build_cnn(width=8, hidden=32)
    trained = distill(digits.module, student, digits.calibration, epochs=15, seed=0)
    assert count_parameters(trained) < count_parameters(digits.module) / 10
    cand = export_onnx(
        trained, digits.calibration.inputs, tmp_path / "s.onnx", input_name="input", name="s"
    )
    assert _top1(cand.path, digits) >= fp32_top1 - 0.05


def test_distillation_rejects_bad_settings(digits: Digits) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        distill(digits.module, build_cnn(8, 32), digits.calibration, temperature=0)
    with pytest.raises(ConfigError, match="alpha"):
        distill(digits.module, build_cnn(8, 32), digits.calibration, alpha=1.5)


def test_export_has_a_free_batch_dimension(digits: Digits, tmp_path: Path) -> None:
    cand = export_onnx(
        digits.module, digits.calibration.inputs, tmp_path / "e.onnx", input_name="input", name="e"
    )
    model = onnx.load(str(cand.path))
    assert model.opset_import[0].version == 17
    session = open_session(cand.path, 1)
    for rows in (1, 7):
        (out,) = session.run(None, {"input": digits.held_out.inputs[:rows]})
        assert out.shape == (rows, 10)
