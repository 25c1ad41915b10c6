"""Compression passes on an ONNX file: portable graph optimisation, int8 dynamic and static
(QDQ with calibration) quantisation, and fp16. Each writes one new file and says how."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgefleet.shared.errors import ConfigError, ModelError

from .._text import first_line
from ._data import EvalData

CalibrationMethodName = Literal["minmax", "entropy", "percentile"]
CALIBRATION_METHODS: tuple[CalibrationMethodName, ...] = ("minmax", "entropy", "percentile")
CALIBRATION_BATCH = 32
# what static int8 quantises in a graph without convolutions (a transformer): the weights'
# ops and the embedding tables
MATMUL_GRAPH_OPS = ["MatMul", "Gemm", "Gather"]

_log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_quantiser() -> Iterator[None]:
    """ONNX Runtime's quantisers warn on the root logger about what they skip (a LayerNorm
    scale with no channel axis, a model not pre-processed): silenced while they run, as
    none of it is news to the operator; errors still show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class PassFailed(ModelError):
    """A compression pass could not produce a model from this input."""

    code = "compression_pass_failed"


@dataclass(frozen=True)
class Candidate:
    """One compressed model on disk and the recipe that made it from the fp32 reference."""

    name: str
    path: Path
    recipe: dict[str, Any] = field(default_factory=dict)


def graph_optimize(
    source: Candidate, out_dir: Path, level: Literal["basic", "extended"] = "basic"
) -> Candidate:
    """ONNX Runtime's graph rewrites saved to a file. Only ``basic`` (constant folding,
    redundant-node removal) and ``extended`` (fusions) are offered: the ``all`` level adds
    layout changes tied to the CPU that ran them, which the target device may not share."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    if level not in levels:
        raise ConfigError(f"graph optimisation level must be basic or extended, not {level!r}")
    out = out_dir / f"{source.name}.opt-{level}.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(
            str(source.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's own exception classes; translated here
        raise PassFailed(f"graph optimisation of {source.name} failed: {first_line(exc)}") from exc
    return derived(source, out, {"pass": "graph_opt", "level": level})


class QuantizationInput:
    """``source`` shape-inferred and folded, as ONNX Runtime's quantisation guide asks, once
    for all the int8 passes of that source; ``close`` removes the file."""

    def __init__(self, source: Candidate, out_dir: Path) -> None:
        self.source = source
        self._file = out_dir / f"{source.name}.pre.onnx"
        self._ready = False
        self._error: Exception | None = None

    def path(self) -> Path:
        """The prepared file, made on first use; a failure is raised again to every pass."""
        if self._error is not None:
            raise self._error
        if not self._ready:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            try:
                # ONNX Runtime's symbolic shape inference is the one that knows the fused
                # transformer ops; plain ONNX inference suffices (and is sturdier) elsewhere
                fused = any(
                    s.get("pass") == "transformer_fusion"
                    for s in self.source.recipe.get("steps", [])
                )
                quant_pre_process(
                    str(self.source.path),
                    str(self._file),
                    skip_symbolic_shape=not fused,
                    auto_merge=fused,
                )
            except Exception as exc:
                self._error = exc
                raise
            self._ready = True
        return self._file

    def close(self) -> None:
        self._file.unlink(missing_ok=True)


def quantize_int8_dynamic(
    source: Candidate,
    out_dir: Path,
    *,
    per_channel: bool = False,
    reduce_range: bool = False,
    prepared: QuantizationInput | None = None,
    exclude: Sequence[str] = (),
    only: Sequence[str] | None = None,
    tag: str = "",
) -> Candidate:
    """Weights to int8 ahead of time, activations quantised at run time. A graph with
    convolutions has its weights stored unsigned: ONNX Runtime's CPU ``ConvInteger`` has no
    signed-weight kernel; others signed, as ONNX Runtime's own default. ``prepared``:
    ``source`` already prepared for quantisation (by default, prepared here and removed).
    ``exclude`` keeps those nodes in float; ``only`` quantises just those; ``tag`` is added
    to the file's name."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tag = f"int8dyn{'-pc' if per_channel else ''}{'-rr' if reduce_range else ''}{tag}"
    out = out_dir / f"{source.name}.{tag}.onnx"
    own = prepared is None
    quant_input = prepared or QuantizationInput(source, out_dir)
    unsigned = has_convolutions(source.path)
    try:
        with quiet_quantiser():
            quantize_dynamic(
                quant_input.path(),
                out,
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                nodes_to_exclude=list(exclude),
                nodes_to_quantize=None if only is None else list(only),
            )
    except Exception as exc:  # the quantiser raises assorted built-in and onnx errors
        raise PassFailed(f"dynamic int8 of {source.name} failed: {first_line(exc)}") from exc
    finally:
        if own:
            quant_input.close()
    recipe = {
        "pass": "int8_dynamic",
        "weight_type": "uint8" if unsigned else "int8",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        **({"kept_float": list(exclude)} if exclude else {}),
    }
    return derived(source, out, recipe)


class _CalibrationReader:
    """Feeds the calibration split to ONNX Runtime's calibrator in small batches."""

    def __init__(self, data: EvalData, batch: int = CALIBRATION_BATCH) -> None:
        self._data = data
        self._batch = min(batch, len(data))
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    @property
    def rows(self) -> int:
        """Rows actually fed: whole batches only, as the histogram calibrators stack them."""
        return len(self._data) // self._batch * self._batch

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.rows, self._batch):
            yield self._data.rows(start, start + self._batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_int8_static(
    source: Candidate,
    out_dir: Path,
    calibration: EvalData,
    *,
    method: CalibrationMethodName = "minmax",
    per_channel: bool = False,
    reduce_range: bool = False,
    prepared: QuantizationInput | None = None,
    exclude: Sequence[str] = (),
    tag: str = "",
) -> Candidate:
    """Weights and activations to int8 in QDQ form, activation ranges from ``calibration``
    (never the evaluation split). ``reduce_range`` uses 7-bit weights, which avoids
    saturation in the u8s8 kernels of x86 CPUs without VNNI. ``prepared`` as for
    ``quantize_int8_dynamic``; ``exclude`` keeps those nodes in float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ConfigError(
            f"unknown calibration method {method!r} (known: {', '.join(CALIBRATION_METHODS)})"
        )
    tag = f"int8qdq-{method}{'-pc' if per_channel else ''}{'-rr' if reduce_range else ''}{tag}"
    out = out_dir / f"{source.name}.{tag}.onnx"

    class Reader(_CalibrationReader, CalibrationDataReader):
        pass

    reader = Reader(calibration)
    # A graph without convolutions (a transformer) has only its MatMul/Gemm weights, their
    # inputs and its embedding tables quantised: quantising every supported op also
    # quantises the attention mask's additive -3.4e38, and the embeddings came out
    # unrelated to fp32 (mean cosine 0.04 on the bench encoder)
    matmul_only = not has_convolutions(source.path)
    own = prepared is None
    quant_input = prepared or QuantizationInput(source, out_dir)
    chatter = io.StringIO()  # the calibrators print their progress; it is logged instead
    try:
        with contextlib.redirect_stdout(chatter), quiet_quantiser():
            quantize_static(
                quant_input.path(),
                out,
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=list(exclude),
                op_types_to_quantize=MATMUL_GRAPH_OPS if matmul_only else None,
            )
    except Exception as exc:  # the quantiser raises assorted built-in and onnx errors
        raise PassFailed(f"static int8 of {source.name} failed: {first_line(exc)}") from exc
    finally:
        for line in chatter.getvalue().splitlines():
            _log.debug("%s calibration: %s", tag, line)
        if own:
            quant_input.close()
    recipe = {
        "pass": "int8_static",
        "format": "qdq",
        "calibration": method,
        "calibration_rows": reader.rows,
        "activation_type": "int8",
        "weight_type": "int8",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        **({"op_types": MATMUL_GRAPH_OPS} if matmul_only else {}),
        **({"kept_float": list(exclude)} if exclude else {}),
    }
    return derived(source, out, recipe)


def convert_fp16(source: Candidate, out_dir: Path) -> Candidate:
    """Weights and arithmetic in float16, inputs and outputs left float32 so callers and
    evaluation data do not change. Pays off on GPUs; most CPUs compute fp16 slowly."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = out_dir / f"{source.name}.fp16.onnx"
    try:
        model = convert_float_to_float16(onnx.load(str(source.path)), keep_io_types=True)
        onnx.save(model, str(out))
    except Exception as exc:  # onnx and the converter raise assorted errors
        raise PassFailed(f"fp16 conversion of {source.name} failed: {first_line(exc)}") from exc
    return derived(source, out, {"pass": "fp16", "keep_io_types": True})


def has_convolutions(model: Path) -> bool:
    import onnx

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception as exc:  # onnx raises assorted errors for a bad file
        raise PassFailed(f"cannot read {model.name}: {first_line(exc)}") from exc
    return any(node.op_type == "Conv" for node in graph.node)


def derived(source: Candidate, out: Path, step: dict[str, Any]) -> Candidate:
    steps = [*source.recipe.get("steps", []), step]
    return Candidate(name=out.stem, path=out, recipe={"steps": steps})
