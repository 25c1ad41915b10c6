"""Which ONNX passes run on which base model, as a list of labelled jobs: the plan of a
``compress`` run. Transformer fusion runs first and adds a base of its own; the others are
jobs on every base (int4 only on unfused ones: the fused embedding and attention ops keep
their weights out of reach of MatMulNBits)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..home import Budgets, Compression
from . import _metrics
from ._data import EvalData
from ._onnx_passes import (
    Candidate,
    PassFailed,
    QuantizationInput,
    convert_fp16,
    graph_optimize,
    has_convolutions,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from ._options import PassOptions
from ._sensitivity import Sensitivity, keep_sensitive_in_float, rank_nodes
from ._transformer_passes import fuse_transformer, quantize_weights_nbits

Job = tuple[str, Callable[[], "Candidate | None"]]
# the kept nodes' int8 weights: one scale per 128 inputs costs 2% over plain int8
KEPT_WEIGHTS_BLOCK = 128


@dataclass(frozen=True)
class Plan:
    """What the passes need beyond the bases: the calibration rows, the knobs, and for the
    accuracy-aware pass the metric, budgets and threads to measure with."""

    allowed: list[str]
    calibration: EvalData
    out_dir: Path
    options: PassOptions
    settings: Compression
    reduce_range: bool
    metric: _metrics.MetricName
    budgets: Budgets
    threads: int


def fused_bases(
    plan: Plan, bases: list[Candidate], skipped: list[dict[str, str]]
) -> list[Candidate]:
    """Each base with the transformer fusions applied, where there was something to fuse."""
    if "transformer_fusion" not in plan.allowed:
        return []
    found = []
    for base in bases:
        try:
            found.append(fuse_transformer(base, plan.out_dir))
        except PassFailed as exc:
            skipped.append({"candidate": f"{base.name} transformer_fusion", "why": exc.message})
    return found


def onnx_jobs(plan: Plan, bases: list[Candidate]) -> tuple[list[Job], list[QuantizationInput]]:
    """The passes to run on each base, and the quantisation inputs they share (one per base,
    prepared on first use; the caller closes them)."""
    jobs: list[Job] = []
    quant_inputs: list[QuantizationInput] = []
    allowed, options, out = plan.allowed, plan.options, plan.out_dir
    for base in bases:
        prepared = QuantizationInput(base, out)
        if {"int8_dynamic", "int8_static", "int8_sensitive"} & set(allowed):
            quant_inputs.append(prepared)
        if "graph_opt" in allowed:
            level = options.graph_opt_level
            jobs.append((f"{base.name} graph_opt", partial(graph_optimize, base, out, level)))
        if "int8_dynamic" in allowed:
            # per-channel dynamic int8 is for MatMul/Gemm graphs; ONNX Runtime's
            # ConvInteger takes one weight scale per tensor
            conv = has_convolutions(base.path)
            for per_channel in (False,) if conv else options.per_channel:
                job = partial(
                    quantize_int8_dynamic,
                    base,
                    out,
                    per_channel=per_channel,
                    reduce_range=plan.reduce_range,
                    prepared=prepared,
                )
                jobs.append((f"{base.name} int8_dynamic per_channel={per_channel}", job))
        if "int8_static" in allowed:
            for method in options.calibration_methods:
                for per_channel in options.per_channel:
                    job = partial(
                        quantize_int8_static,
                        base,
                        out,
                        plan.calibration,
                        method=method,
                        per_channel=per_channel,
                        reduce_range=plan.reduce_range,
                        prepared=prepared,
                    )
                    label = f"{base.name} int8_static {method} per_channel={per_channel}"
                    jobs.append((label, job))
        if "int8_sensitive" in allowed:
            jobs += _sensitive_jobs(plan, base, prepared)
        if "int4_weight" in allowed and not _is_fused(base):
            for block in plan.settings.int4_block_sizes:
                for symmetric in plan.settings.int4_symmetric:
                    job = partial(
                        quantize_weights_nbits,
                        base,
                        out,
                        bits=4,
                        block_size=block,
                        symmetric=symmetric,
                    )
                    jobs.append((f"{base.name} int4 block={block} sym={symmetric}", job))
        if "fp16" in allowed:
            jobs.append((f"{base.name} fp16", partial(convert_fp16, base, out)))
    return jobs, quant_inputs


def _sensitive_jobs(plan: Plan, base: Candidate, prepared: QuantizationInput) -> list[Job]:
    """Per-channel dynamic int8 (and static QDQ, ranked by the same measurement) with the
    most harmful nodes kept in float until the calibration rows meet the budget."""
    ranking: list[Sensitivity] = []
    quantise_dynamic = partial(
        quantize_int8_dynamic,
        base,
        plan.out_dir,
        per_channel=True,
        reduce_range=plan.reduce_range,
        prepared=prepared,
    )
    method = plan.options.calibration_methods[0]
    quantise_static = partial(
        quantize_int8_static,
        base,
        plan.out_dir,
        plan.calibration,
        method=method,
        per_channel=True,
        reduce_range=plan.reduce_range,
        prepared=prepared,
    )

    def ranked() -> list[Sensitivity]:
        if not ranking:
            ranking.extend(
                rank_nodes(
                    base, plan.calibration, plan.metric, quantise_dynamic, threads=plan.threads
                )
            )
        return ranking

    def compact(cand: Candidate, kept: list[str]) -> Candidate:
        matmuls = {s.node for s in ranked() if s.op_type == "MatMul"}
        only = [k for k in kept if k in matmuls]  # MatMulNBits' 8-bit kernels: MatMul only
        if not only:
            raise PassFailed("no kept MatMul to store in int8")
        return quantize_weights_nbits(
            cand, plan.out_dir, bits=8, block_size=KEPT_WEIGHTS_BLOCK, symmetric=True,
            embeddings=False, only=only,
        )  # fmt: skip

    weights = compact if plan.settings.kept_float_weights == "int8" else None

    def keep(quantise: Callable[..., Candidate]) -> Candidate | None:
        return keep_sensitive_in_float(
            base,
            plan.calibration,
            plan.metric,
            quantise,
            ranked(),
            max_drop=plan.budgets.max_accuracy_drop,
            max_worst_drop=plan.budgets.max_worst_drop,
            max_kept=plan.settings.max_kept_float,
            threads=plan.threads,
            kept_weights=weights,
        )

    return [
        (f"{base.name} int8_sensitive dynamic", partial(keep, quantise_dynamic)),
        (f"{base.name} int8_sensitive static {method}", partial(keep, quantise_static)),
    ]


def _is_fused(base: Candidate) -> bool:
    return any(s.get("pass") == "transformer_fusion" for s in base.recipe.get("steps", []))
