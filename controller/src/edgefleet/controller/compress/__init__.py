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
from ._distill_layers import distill_outputs, export_like, layer_stack, shallow_student
from ._measure import Timing, time_side_by_side
from ._metrics import METRICS, cosine, cosine_rows, mse, mse_rows, top1, worst
from ._onnx_passes import (
    Candidate,
    PassFailed,
    convert_fp16,
    graph_optimize,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from ._select import Breach, Measured, NoCandidateFits, breaches, choose
from ._sensitivity import Sensitivity, keep_sensitive_in_float, rank_nodes, weighted_nodes
from ._torch_passes import distill, export_onnx, prune_channels
from ._transformer_passes import attention_shape, fuse_transformer, quantize_weights_nbits

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
    "Sensitivity",
    "Timing",
    "attention_shape",
    "breaches",
    "choose",
    "compress",
    "convert_fp16",
    "cosine",
    "cosine_rows",
    "distill",
    "distill_outputs",
    "export_like",
    "export_onnx",
    "fuse_transformer",
    "graph_optimize",
    "keep_sensitive_in_float",
    "layer_stack",
    "load_eval_data",
    "local_threads",
    "mse",
    "mse_rows",
    "needs_reduce_range",
    "prune_channels",
    "quantize_int8_dynamic",
    "quantize_int8_static",
    "quantize_weights_nbits",
    "rank_nodes",
    "shallow_student",
    "split_eval_data",
    "time_side_by_side",
    "top1",
    "weighted_nodes",
    "worst",
]
