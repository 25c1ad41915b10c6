"""Accuracy-aware int8: which nodes hurt accuracy most when quantised, found by measurement
on the calibration rows, and a quantised model that keeps just enough of them in float to
meet the drop budget there.

Each weighted node (MatMul, Gemm, Conv, Attention, embeddings…) is quantised alone and the
model's outputs compared with fp32 on the calibration rows; the worst row counts as well as
the mean, since one badly wrong embedding is what a user notices. Then the most sensitive
nodes are kept in float, 1, 2, 4… of them, until the whole model meets the target."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _metrics
from ._data import EvalData
from ._measure import open_session, run_outputs
from ._onnx_passes import Candidate, PassFailed

# the node types ONNX Runtime's int8 quantisers turn into integer kernels with weights
WEIGHTED_OPS = frozenset(
    {"MatMul", "Gemm", "Conv", "Attention", "EmbedLayerNormalization", "Gather", "LSTM", "GRU"}
)
# A node holding more than this share of the model's bytes is not kept in float as fp32.
MAX_KEPT_SHARE = 0.05
# Calibration rows and held-out rows differ: aim below the budget by this factor.
TARGET_MARGIN = 0.6

# Quantise a model with some nodes left in float (or only some quantised); the file.
Quantise = Callable[..., Candidate]


@dataclass(frozen=True)
class Sensitivity:
    node: str
    op_type: str
    error: float  # the larger of the mean and worst-row drop with only this node quantised
    weight_bytes: int = 0  # its constant weights, as stored in fp32


def weighted_nodes(model: Path) -> list[tuple[str, str, int]]:
    """(name, op type, weight bytes) of the nodes that take a constant weight, in graph
    order."""
    import math

    import onnx

    graph = onnx.load(str(model)).graph
    sizes = {i.name: math.prod(i.dims) * 4 for i in graph.initializer}
    found = []
    for node in graph.node:
        weights = sum(sizes.get(i, 0) for i in node.input)
        if node.op_type in WEIGHTED_OPS and node.name and weights:
            found.append((node.name, node.op_type, weights))
    return found


def error_against(
    metric: _metrics.MetricName, outputs: np.ndarray, reference: np.ndarray
) -> tuple[float, float]:
    """(mean drop, worst-row drop) of ``outputs`` against the fp32 ``reference``. For top1
    the fraction of rows whose class changed stands for both."""
    if metric == "top1":
        flat, ref = outputs.reshape(len(outputs), -1), reference.reshape(len(reference), -1)
        changed = float(np.mean(np.argmax(flat, 1) != np.argmax(ref, 1)))
        return changed, changed
    best = _metrics.score(metric, reference, reference, None)
    mean_drop = _metrics.drop(metric, best, _metrics.score(metric, outputs, reference, None))
    best_worst = _metrics.worst(metric, reference, reference)
    low = _metrics.worst(metric, outputs, reference)
    assert best_worst is not None and low is not None
    return mean_drop, _metrics.drop(metric, best_worst, low)


def rank_nodes(
    source: Candidate,
    calibration: EvalData,
    metric: _metrics.MetricName,
    quantise: Quantise,
    *,
    threads: int = 1,
) -> list[Sensitivity]:
    """Every weighted node of ``source``, most harmful first: ``quantise(only=[node])``
    made and run on the calibration rows, against fp32."""
    reference = run_outputs(open_session(source.path, threads), calibration)
    ranked = []
    for name, op, weights in weighted_nodes(source.path):
        try:
            alone = quantise(only=[name], tag="-probe")
        except PassFailed:
            continue
        try:
            out = run_outputs(open_session(alone.path, threads), calibration)
        finally:
            alone.path.unlink(missing_ok=True)
        error = max(error_against(metric, out, reference))
        ranked.append(Sensitivity(name, op, error, weights))
    return sorted(ranked, key=lambda s: (-s.error, s.node))


def keep_sensitive_in_float(
    source: Candidate,
    calibration: EvalData,
    metric: _metrics.MetricName,
    quantise: Quantise,
    ranking: Sequence[Sensitivity],
    *,
    max_drop: float,
    max_worst_drop: float | None,
    max_kept: int,
    threads: int = 1,
    kept_weights: Callable[[Candidate, list[str]], Candidate] | None = None,
) -> Candidate | None:
    """The quantised model with the fewest most-sensitive nodes in float (1, 2, 4…, at most
    ``max_kept``) that meets ``TARGET_MARGIN`` of the budgets on the calibration rows; the
    last one tried when none does. None when nothing needs keeping (the fully quantised
    model meets the target: it is a candidate already) or nothing is ranked.
    ``kept_weights`` then stores the kept nodes' weights compactly while their arithmetic
    stays float (weight-only int8), so keeping them costs next to no size."""
    reference = run_outputs(open_session(source.path, threads), calibration)
    target_mean = max_drop * TARGET_MARGIN
    target_worst = None if max_worst_drop is None else max_worst_drop * TARGET_MARGIN

    def meets(cand: Candidate) -> bool:
        mean_drop, worst_drop = error_against(
            metric, run_outputs(open_session(cand.path, threads), calibration), reference
        )
        return mean_drop <= target_mean and (target_worst is None or worst_drop <= target_worst)

    # a node whose weights are a large share of the model (an embedding table) is not kept
    # in float unless they can be stored compactly: it would undo most of the size gain
    total = source.path.stat().st_size
    harmful = [
        s.node
        for s in ranking
        if s.error > 0
        and (s.weight_bytes <= total * MAX_KEPT_SHARE or (kept_weights and s.op_type == "MatMul"))
    ]
    if not harmful or max_kept < 1:
        return None
    full = quantise(tag="-check")
    try:
        if meets(full):
            return None
    finally:
        full.path.unlink(missing_ok=True)
    kept = 1
    last: Candidate | None = None
    while True:
        keep = harmful[:kept]
        if last is not None:
            last.path.unlink(missing_ok=True)
        last = quantise(exclude=keep, tag=f"-keep{len(keep)}")
        if kept_weights is not None:
            compact = _compacted(last, keep, kept_weights)
            if compact is not last:
                last.path.unlink(missing_ok=True)
                last = compact
        if meets(last) or kept >= min(max_kept, len(harmful)):
            break
        kept = min(kept * 2, max_kept, len(harmful))
    steps = last.recipe["steps"]
    where = -2 if len(steps) > 1 and steps[-1].get("pass") == "int8_weight" else -1
    steps[where] = {
        **steps[where],
        "sensitivity": {
            "ranked_nodes": len(ranking),
            "kept_float": keep,
            "target_margin": TARGET_MARGIN,
        },
    }
    return last


def _compacted(
    cand: Candidate, kept: list[str], kept_weights: Callable[[Candidate, list[str]], Candidate]
) -> Candidate:
    try:
        return kept_weights(cand, kept)
    except PassFailed:  # none of the kept nodes has weights it can store compactly
        return cand
