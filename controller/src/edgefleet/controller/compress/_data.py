"""The operator's evaluation data: ``eval.npz`` read and checked against the model, then split
into a calibration part and an evaluation part that never share a sample."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.shared.errors import ConfigError, InvalidInput, ModelLoadError

from .._text import first_line

INPUTS_KEY = "inputs"
LABELS_KEY = "labels"

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


@dataclass(frozen=True)
class EvalData:
    """Inputs for the model's one input, batch first, and the true class per row if known."""

    input_name: str
    inputs: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def take(self, rows: np.ndarray) -> EvalData:
        labels = None if self.labels is None else self.labels[rows]
        return EvalData(self.input_name, self.inputs[rows], labels)


@dataclass(frozen=True)
class ModelInput:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None where the model leaves a dimension free


def model_input(model: Path) -> ModelInput:
    """The single input of an ONNX model, read by ONNX Runtime."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception classes; translated here
        raise ModelLoadError(f"ONNX Runtime cannot load {model.name}: {first_line(exc)}") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise InvalidInput(f"{model.name} has {len(inputs)} inputs ({names}); compress needs one")
    arg = inputs[0]
    if arg.type not in _ORT_DTYPES:
        raise InvalidInput(f"{model.name}: input {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return ModelInput(arg.name, np.dtype(_ORT_DTYPES[arg.type]), shape)


def load_eval_data(path: Path, model: Path) -> EvalData:
    """Read ``path`` (``inputs`` and optionally ``labels``) and check it fits ``model``."""
    spec = model_input(model)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError as exc:
        raise ConfigError(f"data file {path} does not exist") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path.name} is not a readable .npz file: {first_line(exc)}") from exc
    if INPUTS_KEY in arrays:
        inputs = arrays[INPUTS_KEY]
    elif spec.name in arrays:
        inputs = arrays[spec.name]
    else:
        held = ", ".join(arrays) or "nothing"
        raise ConfigError(
            f"{path.name} must hold an array named {INPUTS_KEY!r} (or {spec.name!r}); "
            f"it holds {held}"
        )
    inputs = _fit_inputs(np.asarray(inputs), spec, path)
    labels = arrays.get(LABELS_KEY)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != inputs.shape[0] or labels.dtype.kind not in "iu":
            raise ConfigError(
                f"{path.name}: {LABELS_KEY!r} must be one integer class per input row "
                f"(got shape {labels.shape}, {labels.dtype}, for {inputs.shape[0]} rows)"
            )
        labels = labels.astype(np.int64)
    return EvalData(spec.name, inputs, labels)


def _fit_inputs(inputs: np.ndarray, spec: ModelInput, path: Path) -> np.ndarray:
    if inputs.ndim != len(spec.shape):
        raise InvalidInput(
            f"{path.name}: inputs have shape {inputs.shape}, the model's {spec.name!r} "
            f"wants {_shape_text(spec.shape)}"
        )
    for got, want in zip(inputs.shape, spec.shape, strict=True):
        if want is not None and got != want:
            raise InvalidInput(
                f"{path.name}: inputs have shape {inputs.shape}, the model's {spec.name!r} "
                f"wants {_shape_text(spec.shape)}"
            )
    if inputs.shape[0] < 2:
        raise ConfigError(f"{path.name}: need at least 2 input rows to calibrate and evaluate")
    if inputs.dtype != spec.dtype:
        # widening ints or narrowing float64 to float32 is what numpy users expect; anything
        # else (floats into an integer input) would silently change the data
        if not (inputs.dtype.kind in "fiu" and spec.dtype.kind == "f"):
            raise InvalidInput(
                f"{path.name}: inputs are {inputs.dtype}, the model's {spec.name!r} "
                f"wants {spec.dtype}"
            )
        inputs = inputs.astype(spec.dtype)
    return np.ascontiguousarray(inputs)


def split_eval_data(
    data: EvalData, calibration_fraction: float = 0.5, seed: int = 0
) -> tuple[EvalData, EvalData]:
    """A seeded shuffle cut in two: (calibration, evaluation), disjoint and both non-empty."""
    if not 0.0 < calibration_fraction < 1.0:
        raise ConfigError(f"calibration fraction must be in (0, 1), not {calibration_fraction}")
    order = np.random.default_rng(seed).permutation(len(data))
    cut = min(max(1, round(len(data) * calibration_fraction)), len(data) - 1)
    return data.take(np.sort(order[:cut])), data.take(np.sort(order[cut:]))


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
