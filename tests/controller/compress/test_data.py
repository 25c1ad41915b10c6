"""eval.npz: read, checked against the model, and split without overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.controller.compress import EvalData, load_eval_data, split_eval_data
from edgefleet.shared.errors import ConfigError, InvalidInput, ModelError

from .conftest import Digits, Encoder


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


def test_one_array_per_input_of_a_multi_input_model(encoder: Encoder, tmp_path: Path) -> None:
    data = load_eval_data(encoder.eval_npz, encoder.onnx)
    assert list(data.feeds) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(a.dtype == np.int64 for a in data.feeds.values())
    cal, ev = split_eval_data(data, 0.5, seed=1)
    assert len(cal) + len(ev) == len(data)
    # rows stay paired across inputs: each row's mask covers exactly its non-padding ids
    for part in (cal, ev):
        assert np.array_equal(part.feeds["attention_mask"] == 1, part.feeds["input_ids"] != 0)
    # int32 ids are widened; a shorter sequence fits the free axis
    arrays = {k: v[:, :10].astype(np.int32) for k, v in np.load(encoder.eval_npz).items()}
    np.savez(tmp_path / "short.npz", **arrays)
    short = load_eval_data(tmp_path / "short.npz", encoder.onnx)
    assert short.feeds["input_ids"].dtype == np.int64 and short.inputs.shape[1] == 10


def _encoder_arrays(encoder: Encoder) -> dict[str, np.ndarray]:
    return dict(np.load(encoder.eval_npz).items())


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.pop("attention_mask"), ConfigError,
         r"an array per input of bert:2\.0: missing 'attention_mask'; it holds input_ids, "
         "token_type_ids"),
        (lambda a: a.update(extra=a["input_ids"]), ConfigError,
         r"arrays that are not inputs of bert:2\.0: 'extra'"),
        (lambda a: a.update(token_type_ids=a["token_type_ids"][:-1]), InvalidInput,
         "the inputs of bert:2.0 need the same rows; got input_ids 48, attention_mask 48, "
         "token_type_ids 47"),
        (lambda a: a.update(attention_mask=a["attention_mask"][:, :5]), InvalidInput,
         "bert:2.0's inputs share axis 'sequence', but input_ids has 24 along it and "
         "attention_mask has 5"),
        (lambda a: a.update(input_ids=a["input_ids"].astype(np.float32)), InvalidInput,
         "input_ids is float32, bert:2.0's 'input_ids' wants int64"),
        (lambda a: a.update(input_ids=a["input_ids"][:, :, None]), InvalidInput,
         r"input_ids has shape \(48, 24, 1\), bert:2\.0's 'input_ids' wants \[N, N\]"),
    ],
    ids=["missing", "extra", "rows", "shared-axis", "float-ids", "rank"],
)  # fmt: skip
def test_multi_input_data_that_does_not_fit(
    encoder: Encoder, tmp_path: Path, change: object, error: type, match: str
) -> None:
    arrays = _encoder_arrays(encoder)
    change(arrays)  # type: ignore[operator]
    np.savez(tmp_path / "e.npz", **arrays)
    with pytest.raises(error, match=match):
        load_eval_data(tmp_path / "e.npz", encoder.onnx, "bert:2.0")


def test_a_bool_input(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Where", ["keep", "x", "zero"], ["y"])],
        "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("keep", TensorProto.BOOL, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )  # fmt: skip
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    keep = np.arange(12).reshape(4, 3) % 2 == 0
    np.savez(tmp_path / "e.npz", x=np.ones((4, 3)), keep=keep)
    data = load_eval_data(tmp_path / "e.npz", tmp_path / "m.onnx")
    assert data.feeds["keep"].dtype == np.bool_ and data.feeds["x"].dtype == np.float32
    np.savez(tmp_path / "ints.npz", x=np.ones((4, 3)), keep=keep.astype(np.int64))
    with pytest.raises(InvalidInput, match=r"keep is int64, m\.onnx's 'keep' wants bool"):
        load_eval_data(tmp_path / "ints.npz", tmp_path / "m.onnx")
