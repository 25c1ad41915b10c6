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


# -- models for rollout tests: one slower than digits_model, one that fails on a marker ----

_SLOW_WIDTH = 512  # of the extra layers: each costs one 512x512 MatMul per row
POISON_ABOVE = 100.0  # a pixel above this (digits pixels are 0..1 here, 0..16 raw) is the marker


def slow_digits_model(seed: int = 0, factor: int = 24) -> onnx.ModelProto:
    """``digits_model(seed)`` with ``factor`` extra dense layers that cost time and change
    no answer.

    The agent times the whole request (reading and parsing the body, the ONNX Runtime run,
    encoding the answer), and for the digits MLP the run is the smallest part, so the
    extra layers must outweigh the HTTP work. ONNX Runtime's optimiser folds constants and
    drops unused nodes, so the layers start from the input and end in the logits: their
    per-row sum, scaled by 1e-3, is added to every logit, which the softmax cancels (a
    shift of all logits changes no probability). All layers share one weight matrix, so
    the file grows by 1 MiB, not ``factor`` MiB.

    Measured on a 2-core x86-64 box, one thread, batch 1, median of 600 requests: the
    default 24 layers took the agent's request latency from ~0.14 ms to ~0.45 ms (3.4x),
    the ONNX Runtime run alone from ~9 us to ~280 us; each layer adds ~12 us there.
    """
    base = digits_model(seed)
    rng = np.random.default_rng(1000 + seed)
    graph = base.graph
    softmax = graph.node.pop()  # Softmax(logits) -> probs; re-added over the shifted logits
    first = rng.standard_normal((64, _SLOW_WIDTH)).astype(np.float32) * np.float32(0.125)
    square = rng.standard_normal((_SLOW_WIDTH, _SLOW_WIDTH)).astype(np.float32)
    square *= np.float32(1.0 / np.sqrt(_SLOW_WIDTH))  # keeps the activations near unit size
    graph.initializer.extend(
        [
            numpy_helper.from_array(first, "slow_first"),
            numpy_helper.from_array(square, "slow_square"),
            numpy_helper.from_array(np.array(1e-3, np.float32), "slow_weight"),
        ]
    )
    nodes = [
        helper.make_node("MatMul", ["input", "slow_first"], ["slow_m0"]),
        helper.make_node("Tanh", ["slow_m0"], ["slow_t0"]),
    ]
    for i in range(1, factor + 1):
        nodes.append(helper.make_node("MatMul", [f"slow_t{i - 1}", "slow_square"], [f"slow_m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_t{i}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_t{factor}"], ["slow_sum"], keepdims=1),
        helper.make_node("Mul", ["slow_sum", "slow_weight"], ["slow_shift"]),
        helper.make_node("Add", ["logits", "slow_shift"], ["slow_logits"]),
        helper.make_node("Softmax", ["slow_logits"], list(softmax.output), axis=1),
    ]
    graph.node.extend(nodes)
    graph.name = f"digits_mlp_{seed}_slow{factor}"
    onnx.checker.check_model(base)
    return base


def write_slow_digits_model(path: Path, seed: int = 0, factor: int = 24) -> Path:
    return _save(slow_digits_model(seed, factor), path)


def failing_digits_model(seed: int = 0) -> onnx.ModelProto:
    """``digits_model(seed)`` that makes ONNX Runtime raise on any row holding a pixel above
    :data:`POISON_ABOVE` (see :func:`poisoned`), and answers every other row the same.

    Each row's marker flag becomes an index into a one-element table (0 in range, 1000
    out of it); the looked-up zero is added to the row's logits. The index depends on the
    input, so no optimisation can fold it away, and Gather checks its bounds at run time.
    """
    base = digits_model(seed)
    graph = base.graph
    softmax = graph.node.pop()
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(POISON_ABOVE, np.float32), "poison_above"),
            numpy_helper.from_array(np.array(1000, np.int64), "poison_index"),
            numpy_helper.from_array(np.zeros(1, np.float32), "poison_table"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("ReduceMax", ["input"], ["poison_max"], axes=[1], keepdims=1),
            helper.make_node("Greater", ["poison_max", "poison_above"], ["poison_flag"]),
            helper.make_node("Cast", ["poison_flag"], ["poison_int"], to=TensorProto.INT64),
            helper.make_node("Mul", ["poison_int", "poison_index"], ["poison_at"]),
            helper.make_node("Gather", ["poison_table", "poison_at"], ["poison_zero"], axis=0),
            helper.make_node("Add", ["logits", "poison_zero"], ["poison_logits"]),
            helper.make_node("Softmax", ["poison_logits"], list(softmax.output), axis=1),
        ]
    )
    graph.name = f"digits_mlp_{seed}_failing"
    onnx.checker.check_model(base)
    return base


def write_failing_digits_model(path: Path, seed: int = 0) -> Path:
    return _save(failing_digits_model(seed), path)


def poisoned(rows: np.ndarray) -> np.ndarray:
    """A copy of digits ``rows`` carrying the marker :func:`failing_digits_model` fails on."""
    out = np.array(rows, dtype=np.float32, copy=True)
    out[..., 0] = 2 * POISON_ABOVE
    return out
