"""Measuring models with ONNX Runtime the way a device runs them: outputs on the held-out
data, file size, and latency of every candidate timed in the same run as the reference."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.shared.errors import InvalidInput, ModelLoadError

from .._text import first_line
from ._data import EvalData

EVAL_BATCH = 256


@dataclass(frozen=True)
class Timing:
    latency_ms_p50: float
    latency_ms_p95: float
    runs: int


def open_session(model: Path, intra_op_threads: int, inter_op_threads: int = 1) -> Any:
    """An ``InferenceSession`` built like the agent builds one (default optimisation level,
    the profile's thread counts), so timings mean what they will mean on the device."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.log_severity_level = 3
    # several sessions are timed in turn: a session's idle workers must not keep spinning
    # on the cores while the next session runs, or each model pays for the one before it
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's own exception classes; translated here
        raise ModelLoadError(f"ONNX Runtime cannot load {model.name}: {first_line(exc)}") from exc


def run_outputs(session: Any, data: EvalData, batch: int = EVAL_BATCH) -> np.ndarray:
    """The first output of the model for every row of ``data``, in batches."""
    chunks = []
    for start in range(0, len(data), batch):
        try:
            chunks.append(np.asarray(session.run(None, data.rows(start, start + batch))[0]))
        except Exception as exc:
            why = first_line(exc)
            raise InvalidInput(f"the model fails on the evaluation data: {why}") from exc
    return np.concatenate(chunks).astype(np.float32)


def file_size(model: Path) -> int:
    return model.stat().st_size


def time_side_by_side(
    models: Mapping[str, Path],
    sample: Mapping[str, np.ndarray] | np.ndarray,
    input_name: str | None = None,
    *,
    intra_op_threads: int,
    inter_op_threads: int = 1,
    runs: int = 100,
    warmup: int = 10,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Timing]:
    """Latency of each model on ``sample``, in interleaved rounds: every round runs every
    model once, in a fresh seeded order, so clock, thermal and cache drift hit all alike.
    ``sample`` is a feed (an array per input), or one array for the input ``input_name``."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    names = list(models)
    sessions = {n: open_session(models[n], intra_op_threads, inter_op_threads) for n in names}
    if isinstance(sample, np.ndarray):
        if input_name is None:
            raise ValueError("one array as the sample needs its input_name")
        sample = {input_name: sample}
    feed = {name: np.ascontiguousarray(a) for name, a in sample.items()}
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, feed)
    samples: dict[str, list[float]] = {n: [] for n in names}
    rng = np.random.default_rng(seed)
    for done in range(runs):
        for i in rng.permutation(len(names)):
            name = names[i]
            t0 = time.perf_counter_ns()
            sessions[name].run(None, feed)
            samples[name].append((time.perf_counter_ns() - t0) / 1e6)
        if progress is not None:
            progress(done + 1, runs)
    return {
        n: Timing(
            latency_ms_p50=float(np.percentile(s, 50)),
            latency_ms_p95=float(np.percentile(s, 95)),
            runs=runs,
        )
        for n, s in samples.items()
    }
