"""``compress``: one fp32 model in, the profile's allowed passes run, every candidate
measured against the reference in one run, the best inside the budget chosen and reported."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.shared.errors import ConfigError, ModelError

from ..home import Budgets, DeviceProfile
from . import _metrics
from ._data import EvalData, load_eval_data, split_eval_data
from ._jobs import Plan, fused_bases, onnx_jobs
from ._measure import file_size, open_session, run_outputs, time_side_by_side
from ._onnx_passes import Candidate, PassFailed
from ._options import PassOptions
from ._select import Measured, Objective, breaches, check_objective, choose
from ._torch_candidates import torch_candidates

if TYPE_CHECKING:
    import torch

Progress = Callable[[str, int, int], None]
# Latency measured somewhere else (a device): every candidate in, the reference first; out,
# each one's (p50 ms, p95 ms) there, or why it could not be measured there
Measure = Callable[[list[Candidate]], Mapping[str, tuple[float, float] | str]]
REFERENCE = "fp32"
# ISA features meaning the CPU has VNNI int8 dot products; without them, x86 int8 needs
# reduce-range to avoid saturating the u8s8 kernels
VNNI_FEATURES = frozenset({"avx-vnni", "avx512-vnni", "avx512vnni", "vnni", "amx"})


@dataclass
class CompressionReport:
    profile: str
    metric: str
    objective: str
    seed: int
    budgets: dict[str, Any]
    intra_op_threads: int
    latency_runs: int
    latency_batch: int
    calibration_rows: int
    evaluation_rows: int
    reference: Measured
    chosen: Measured
    candidates: list[Measured]
    skipped: list[dict[str, str]] = field(default_factory=list)
    measured_on: str | None = None  # where the latency that decided was measured, if not here

    def to_dict(self) -> dict[str, Any]:
        where = {} if self.measured_on is None else {"measured_on": self.measured_on}
        return {
            "profile": self.profile,
            "metric": self.metric,
            "objective": self.objective,
            "seed": self.seed,
            "budgets": self.budgets,
            "intra_op_threads": self.intra_op_threads,
            "latency_runs": self.latency_runs,
            "latency_batch": self.latency_batch,
            **where,
            "calibration_rows": self.calibration_rows,
            "evaluation_rows": self.evaluation_rows,
            "reference": self.reference.to_dict(),
            "chosen": self.chosen.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "skipped": self.skipped,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def needs_reduce_range(profile: DeviceProfile) -> bool:
    features = {f.lower() for f in profile.isa_features}
    return profile.arch == "x86_64" and not (features & VNNI_FEATURES)


def compress(
    model: Path,
    data: Path,
    profile: DeviceProfile,
    out_dir: Path,
    *,
    metric: str = "top1",
    max_drop: float | None = None,
    max_worst_drop: float | None = None,
    objective: str | None = None,
    torch_model: torch.nn.Module | None = None,
    student: torch.nn.Module | None = None,
    options: PassOptions | None = None,
    seed: int = 0,
    calibration_fraction: float = 0.5,
    latency_runs: int = 100,
    latency_batch: int = 1,
    progress: Progress | None = None,
    measure: Measure | None = None,
    measured_on: str = "device",
    model_label: str | None = None,
) -> CompressionReport:
    """Run the passes ``profile`` allows on ``model`` (and on ``torch_model`` for pruning and
    distillation), measure every candidate against the fp32 reference on the held-out part
    of ``data``, and choose the best inside the budget by ``objective`` (the profile's own
    by default). With ``measure``, latency budgets and the choice rest on the figures it
    returns (from ``measured_on``); a candidate it could not measure is skipped. Raises
    ``NoCandidateFits`` when nothing fits, ``ConfigError`` for a profile allowing nothing or
    bad settings. ``model_label`` names the model in errors (``name:version``)."""
    allowed: list[str] = list(profile.compression.passes)
    if not allowed:
        raise ConfigError(f"profile {profile.name!r} allows no compression passes")
    goal: Objective = check_objective(objective or profile.compression.objective)
    budgets = profile.budgets
    if max_drop is not None:
        if not 0.0 <= max_drop <= 1.0:
            raise ConfigError(f"max drop must be in [0, 1], not {max_drop}")
        budgets = budgets.model_copy(update={"max_accuracy_drop": max_drop})
    if max_worst_drop is not None:
        if not 0.0 <= max_worst_drop <= 1.0:
            raise ConfigError(f"max worst drop must be in [0, 1], not {max_worst_drop}")
        budgets = budgets.model_copy(update={"max_worst_drop": max_worst_drop})
    if latency_runs < 1 or latency_batch < 1:
        raise ConfigError("latency runs and batch must be at least 1")
    options = options or PassOptions()
    notify = progress or (lambda _stage, _done, _total: None)

    evaluation_data = load_eval_data(data, model, model_label)
    metric_name = _metrics.check_metric(metric, evaluation_data.labels is not None)
    if max_worst_drop is not None and metric_name == "top1":
        raise ConfigError("a worst-row budget needs the cosine or mse metric, not top1")
    calibration, held_out = split_eval_data(evaluation_data, calibration_fraction, seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    reference = Candidate(REFERENCE, out_dir / f"{REFERENCE}.onnx", {"steps": []})
    if model.resolve() != reference.path.resolve():
        shutil.copyfile(model, reference.path)

    skipped: list[dict[str, str]] = []
    bases = [reference]
    bases += torch_candidates(
        allowed,
        torch_model,
        student,
        calibration,
        out_dir,
        options,
        seed,
        notify,
        skipped,
        reference.path,
    )
    threads = local_threads(profile.runtime.intra_op_threads)
    plan = Plan(
        allowed=allowed,
        calibration=calibration,
        out_dir=out_dir,
        options=options,
        settings=profile.compression,
        reduce_range=(
            needs_reduce_range(profile) if options.reduce_range is None else options.reduce_range
        ),
        metric=metric_name,
        budgets=budgets,
        threads=threads,
    )
    bases += fused_bases(plan, bases, skipped)
    candidates = list(bases)
    jobs, quant_inputs = onnx_jobs(plan, bases)
    try:
        for done, (label, job) in enumerate(jobs, start=1):
            try:
                made = job()
                if made is not None:
                    candidates.append(made)
            except PassFailed as exc:
                skipped.append({"candidate": label, "why": exc.message})
            notify("onnx passes", done, len(jobs))
    finally:
        for quant_input in quant_inputs:
            quant_input.close()

    measured = _measure_all(
        candidates,
        held_out,
        metric_name,
        threads=threads,
        inter_threads=profile.runtime.inter_op_threads,
        runs=latency_runs,
        batch=latency_batch,
        seed=seed,
        notify=notify,
        skipped=skipped,
    )
    if measure is not None:
        measured = _remeasured(measure, measured, measured_on, skipped)
    measured = [_with_breaches(m, budgets) for m in measured]
    chosen = choose(measured, budgets, goal)
    return CompressionReport(
        profile=profile.name,
        metric=metric_name,
        objective=goal,
        seed=seed,
        budgets=budgets.model_dump(),
        intra_op_threads=threads,
        latency_runs=latency_runs,
        latency_batch=latency_batch,
        calibration_rows=len(calibration),
        evaluation_rows=len(held_out),
        reference=next(m for m in measured if m.name == REFERENCE),
        chosen=chosen,
        candidates=measured,
        skipped=skipped,
        measured_on=measured_on if measure is not None else None,
    )


def local_threads(profile_threads: int) -> int:
    """The intra-op threads for measuring here: the profile's, but no more than this host's
    cores. More threads than cores time the contention between ONNX Runtime's spinning
    workers, not the model (on 2 cores, 4 threads made int8 look 1.08x faster instead of
    1.29x). 0 lets ONNX Runtime choose, as on the device."""
    if profile_threads == 0:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(profile_threads, cores or 1))


def _measure_all(
    candidates: list[Candidate],
    held_out: EvalData,
    metric: _metrics.MetricName,
    *,
    threads: int,
    inter_threads: int,
    runs: int,
    batch: int,
    seed: int,
    notify: Progress,
    skipped: list[dict[str, str]],
) -> list[Measured]:
    reference_session = open_session(candidates[0].path, threads, inter_threads)
    reference_out = run_outputs(reference_session, held_out)
    reference_score = _metrics.score(metric, reference_out, reference_out, held_out.labels)
    reference_worst = _metrics.worst(metric, reference_out, reference_out)
    scores: dict[str, tuple[float, float]] = {}
    worst: dict[str, tuple[float | None, float | None]] = {}
    usable: list[Candidate] = []
    for done, cand in enumerate(candidates, start=1):
        try:
            out = run_outputs(open_session(cand.path, threads, inter_threads), held_out)
        except ModelError as exc:
            if cand is candidates[0]:
                raise
            skipped.append({"candidate": cand.name, "why": exc.message})
            continue
        value = _metrics.score(metric, out, reference_out, held_out.labels)
        scores[cand.name] = (value, _metrics.drop(metric, reference_score, value))
        low = _metrics.worst(metric, out, reference_out)
        worst[cand.name] = (
            low,
            None if low is None or reference_worst is None
            else _metrics.drop(metric, reference_worst, low),
        )  # fmt: skip
        usable.append(cand)
        notify("evaluate", done, len(candidates))
    timings = time_side_by_side(
        {c.name: c.path for c in usable},
        held_out.rows(0, batch),
        intra_op_threads=threads,
        inter_op_threads=inter_threads,
        runs=runs,
        seed=seed,
        progress=lambda d, t: notify("latency", d, t),
    )
    return [
        Measured(
            name=c.name,
            recipe=c.recipe,
            size_bytes=file_size(c.path),
            latency_ms_p50=timings[c.name].latency_ms_p50,
            latency_ms_p95=timings[c.name].latency_ms_p95,
            metric=scores[c.name][0],
            drop=scores[c.name][1],
            path=c.path,
            metric_worst=worst[c.name][0],
            drop_worst=worst[c.name][1],
        )
        for c in usable
    ]


def _remeasured(
    measure: Measure, measured: list[Measured], where: str, skipped: list[dict[str, str]]
) -> list[Measured]:
    """``measured`` with ``measure``'s latency, keeping this machine's as ``local_*``."""
    found = measure([Candidate(m.name, m.path, m.recipe) for m in measured if m.path])
    kept: list[Measured] = []
    for m in measured:
        figures = found.get(m.name, "not measured")
        if isinstance(figures, str):
            if m.name == REFERENCE:
                raise ModelError(
                    f"the {REFERENCE} reference was not measured on {where}: {figures}"
                )
            skipped.append({"candidate": m.name, "why": f"on {where}: {figures}"})
            continue
        kept.append(
            replace(
                m,
                latency_ms_p50=figures[0],
                latency_ms_p95=figures[1],
                local_latency_ms_p50=m.latency_ms_p50,
                local_latency_ms_p95=m.latency_ms_p95,
            )
        )
    return kept


def _with_breaches(m: Measured, budgets: Budgets) -> Measured:
    return replace(m, breaches=breaches(m, budgets))
