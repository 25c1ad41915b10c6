"""eval.npz: read, checked against the model, and split without overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.controller.compress import EvalData, load_eval_data, split_eval_data
from edgefleet.shared.errors import ConfigError, InvalidInput, ModelError

from .conftest import Digits


def test_loads_inputs_and_labels(digits: Digits) -> None:
    data = load_eval_data(digits.eval_npz, digits.onnx)
    assert data.input_name == "input"
    assert data.inputs.shape[1:] == (1, 8, 8)
    assert data.inputs.dtype == np.float32
    assert data.labels is not None and len(data.labels) == len(data)


def test_labels_are_optional_and_float64_inputs_are_cast(digits: Digits, tmp_path: Path) -> None:
    inputs = np.load(digits.eval_npz)["inputs"].astype(np.float64)
    np.savez(tmp_path / "x.npz", inputs=inputs)
    data = load_eval_data(tmp_path / "x.npz", digits.onnx)
    assert data.labels is None and data.inputs.dtype == np.float32


def test_split_is_disjoint_complete_and_seeded() -> None:
    data = EvalData.single("input", np.arange(100, dtype=np.float32)[:, None], np.arange(100))
    cal, ev = split_eval_data(data, 0.3, seed=7)
    cal_ids, ev_ids = set(cal.inputs[:, 0].tolist()), set(ev.inputs[:, 0].tolist())
    assert cal_ids.isdisjoint(ev_ids)
    assert cal_ids | ev_ids == set(range(100))
    assert (len(cal), len(ev)) == (30, 70)
    assert np.array_equal(cal.labels, cal.inputs[:, 0].astype(np.int64))  # rows stay paired
    again, _ = split_eval_data(data, 0.3, seed=7)
    other, _ = split_eval_data(data, 0.3, seed=8)
    assert np.array_equal(again.inputs, cal.inputs)
    assert not np.array_equal(other.inputs, cal.inputs)


def test_split_keeps_both_sides_non_empty() -> None:
    data = EvalData.single("input", np.zeros((2, 1), np.float32))
    cal, ev = split_eval_data(data, 0.99)
    assert (len(cal), len(ev)) == (1, 1)
    with pytest.raises(ConfigError, match="calibration fraction"):
        split_eval_data(data, 1.0)


def test_missing_file(digits: Digits, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_eval_data(tmp_path / "nope.npz", digits.onnx)


def test_unreadable_file(digits: Digits, tmp_path: Path) -> None:
    bad = tmp_path / "eval.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(ConfigError, match=r"not a readable \.npz"):
        load_eval_data(bad, digits.onnx)


def test_missing_inputs_array(digits: Digits, tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", images=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(ConfigError, match=r"'inputs'.*holds images"):
        load_eval_data(tmp_path / "e.npz", digits.onnx)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4, 64), np.float32), r"shape \(4, 64\).*wants \[N, 1, 8, 8\]"),
        (np.zeros((4, 1, 9, 9), np.float32), r"shape \(4, 1, 9, 9\)"),
        (np.zeros((4, 1, 8, 8), np.bool_), "is bool, digits.onnx's 'input' wants float32"),
    ],
    ids=["wrong-rank", "wrong-size", "wrong-dtype"],
)
def test_inputs_that_do_not_fit_the_model(
    digits: Digits, tmp_path: Path, array: np.ndarray, match: str
) -> None:
    np.savez(tmp_path / "e.npz", inputs=array)
    with pytest.raises(InvalidInput, match=match) as caught:
        load_eval_data(tmp_path / "e.npz", digits.onnx)
    assert isinstance(caught.value, ModelError)


def test_labels_that_do_not_match_the_rows(digits: Digits, tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", inputs=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(3))
    with pytest.raises(ConfigError, match="one integer class per input row"):
        load_eval_data(tmp_path / "e.npz", digits.onnx)


def test_a_file_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"not onnx")
    np.savez(tmp_path / "e.npz", inputs=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(ModelError, match=r"cannot load m\.onnx"):
        load_eval_data(tmp_path / "e.npz", tmp_path / "m.onnx")
