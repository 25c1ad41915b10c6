"""Small real models for tests: an MLP trained on scikit-learn's bundled digits, in ONNX."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


@functools.cache
def _weights(seed: int, hidden: int) -> tuple[np.ndarray, ...]:
    from sklearn.neural_network import MLPClassifier

    x, y = digits()
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=60, random_state=seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x[:1500], y[:1500])
    w1, w2 = clf.coefs_
    b1, b2 = clf.intercepts_
    return (
        w1.astype(np.float32),
        b1.astype(np.float32),
        w2.astype(np.float32),
        b2.astype(np.float32),
    )


def digits_model(seed: int = 0, hidden: int = 32, pad_bytes: int = 0) -> onnx.ModelProto:
    """input[N,64] float32 -> probs[N,10]. ``pad_bytes`` adds an unused initializer
    so a test can make the file as large (slow to move) as it needs."""
    w1, b1, w2, b2 = _weights(seed, hidden)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    if pad_bytes:
        rng = np.random.default_rng(seed)
        pad = rng.standard_normal(pad_bytes // 4).astype(np.float32)
        inits.append(numpy_helper.from_array(pad, "padding"))  # unused; only adds bytes
    graph = helper.make_graph(
        nodes,
        f"digits_mlp_{seed}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def write_digits_model(path: Path, seed: int = 0, **kw: int) -> Path:
    return _save(digits_model(seed, **kw), path)
