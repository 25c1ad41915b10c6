"""Compression per device profile: passes that turn one fp32 model into candidates, and
measurement against the reference that picks the best one inside a profile's budget.

Importing this package does not load torch; the pruning and distillation passes do."""

from __future__ import annotations

from ._compress import (
    REFERENCE,
    CompressionReport,
    PassOptions,
    Progress,
    compress,
    local_threads,
    needs_reduce_range,
)
from ._data import EvalData, load_eval_data, split_eval_data
from ._measure import Timing, time_side_by_side
from ._metrics import METRICS, cosine, mse, top1
from ._onnx_passes import (
    Candidate,
    PassFailed,
    convert_fp16,
    graph_optimize,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from ._select import Breach, Measured, NoCandidateFits, breaches, choose
from ._torch_passes import distill, export_onnx, prune_channels

__all__ = [
    "METRICS",
    "REFERENCE",
    "Breach",
    "Candidate",
    "CompressionReport",
    "EvalData",
    "Measured",
    "NoCandidateFits",
    "PassFailed",
    "PassOptions",
    "Progress",
    "Timing",
    "breaches",
    "choose",
    "compress",
    "convert_fp16",
    "cosine",
    "distill",
    "export_onnx",
    "graph_optimize",
    "load_eval_data",
    "local_threads",
    "mse",
    "needs_reduce_range",
    "prune_channels",
    "quantize_int8_dynamic",
    "quantize_int8_static",
    "split_eval_data",
    "time_side_by_side",
    "top1",
]
