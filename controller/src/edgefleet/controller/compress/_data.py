"""The operator's evaluation data: ``eval.npz`` read and checked against the model (one
array per model input, batch first, plus ``labels``), then split by rows into a
calibration part and an evaluation part that never share a sample."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.shared.errors import ConfigError, InvalidInput, ModelLoadError

from .._text import first_line

INPUTS_KEY = "inputs"  # the one array of a single-input model, whatever its input is named
LABELS_KEY = "labels"

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class EvalData:
    """One array per model input (in the model's input order), batch first, all with the
    same number of rows, and the true class per row if known."""

    feeds: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        rows = {int(a.shape[0]) for a in self.feeds.values()}
        if not self.feeds or len(rows) != 1:
            raise ValueError("EvalData needs at least one input, all with the same rows")

    @classmethod
    def single(
        cls, input_name: str, inputs: np.ndarray, labels: np.ndarray | None = None
    ) -> EvalData:
        """Data for a model with one input."""
        return cls({input_name: inputs}, labels)

    def __len__(self) -> int:
        return int(next(iter(self.feeds.values())).shape[0])

    @property
    def input_name(self) -> str:
        """The first input's name (the only one of a single-input model)."""
        return next(iter(self.feeds))

    @property
    def inputs(self) -> np.ndarray:
        """The first input's rows (all of a single-input model's data)."""
        return next(iter(self.feeds.values()))

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """A feed for ONNX Runtime: rows ``start:stop`` of every input."""
        return {name: a[start:stop] for name, a in self.feeds.items()}

    def take(self, rows: np.ndarray) -> EvalData:
        labels = None if self.labels is None else self.labels[rows]
        return EvalData({name: a[rows] for name, a in self.feeds.items()}, labels)


@dataclass(frozen=True)
class ModelInput:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # an int where fixed, a name or None where free


def model_inputs(model: Path, label: str | None = None) -> list[ModelInput]:
    """The inputs of an ONNX model, read by ONNX Runtime. ``label`` names the model in
    errors (``name:version``); the file's name by default."""
    import onnxruntime as ort

    label = label or model.name
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception classes; translated here
        raise ModelLoadError(f"ONNX Runtime cannot load {label}: {first_line(exc)}") from exc
    found = []
    for arg in session.get_inputs():
        if arg.type not in _ORT_DTYPES:
            raise InvalidInput(f"{label}: input {arg.name!r} has unsupported type {arg.type}")
        shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
        found.append(ModelInput(arg.name, np.dtype(_ORT_DTYPES[arg.type]), shape))
    return found


def load_eval_data(path: Path, model: Path, label: str | None = None) -> EvalData:
    """Read ``path`` and check it fits ``model``: an array per input, named after it (a
    single-input model also takes ``inputs``), and optionally ``labels``."""
    label = label or model.name
    specs = model_inputs(model, label)
    arrays = _read_npz(path)
    by_name = _arrays_by_input(arrays, specs, path, label)
    feeds = {
        spec.name: _fit_input(np.asarray(by_name[spec.name]), spec, path, label) for spec in specs
    }
    _check_rows_and_axes(feeds, specs, path, label)
    rows = len(next(iter(feeds.values())))
    if rows < 2:
        raise ConfigError(f"{path.name}: need at least 2 rows to calibrate and evaluate")
    labels = arrays.get(LABELS_KEY)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != rows or labels.dtype.kind not in "iu":
            raise ConfigError(
                f"{path.name}: {LABELS_KEY!r} must be one integer class per input row "
                f"(got shape {labels.shape}, {labels.dtype}, for {rows} rows)"
            )
        labels = labels.astype(np.int64)
    return EvalData(feeds, labels)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError as exc:
        raise ConfigError(f"data file {path} does not exist") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path.name} is not a readable .npz file: {first_line(exc)}") from exc


def _arrays_by_input(
    arrays: dict[str, np.ndarray], specs: list[ModelInput], path: Path, label: str
) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    held = ", ".join(arrays) or "nothing"
    if len(specs) == 1 and names[0] not in arrays and INPUTS_KEY in arrays:
        arrays = {
            names[0]: arrays[INPUTS_KEY],
            **{k: v for k, v in arrays.items() if k != INPUTS_KEY},
        }
    missing = [n for n in names if n not in arrays]
    if missing:
        alias = f" (or {INPUTS_KEY!r})" if len(specs) == 1 else ""
        raise ConfigError(
            f"{path.name} must hold an array per input of {label}: missing "
            f"{', '.join(repr(n) for n in missing)}{alias}; it holds {held}"
        )
    extra = [k for k in arrays if k not in names and k != LABELS_KEY]
    if extra:
        raise ConfigError(
            f"{path.name} holds arrays that are not inputs of {label}: "
            f"{', '.join(repr(k) for k in extra)} (its inputs: {', '.join(names)}; "
            f"and {LABELS_KEY!r} for top1)"
        )
    return arrays


def _fit_input(inputs: np.ndarray, spec: ModelInput, path: Path, label: str) -> np.ndarray:
    wants = f"{label}'s {spec.name!r} wants {_shape_text(spec.shape)}"
    if inputs.ndim != len(spec.shape):
        raise InvalidInput(f"{path.name}: {spec.name} has shape {inputs.shape}, {wants}")
    for got, want in zip(inputs.shape, spec.shape, strict=True):
        if isinstance(want, int) and got != want:
            raise InvalidInput(f"{path.name}: {spec.name} has shape {inputs.shape}, {wants}")
    if inputs.dtype != spec.dtype:
        # widening ints, ints or narrowing float64 into a float input, ints into wider ints:
        # what numpy users expect; anything else (floats into ids, ints into a mask of
        # bools) would silently change the data
        kind, want_kind = inputs.dtype.kind, spec.dtype.kind
        safe = (kind in "fiu" and want_kind == "f") or (
            kind in "iu" and want_kind in "iu" and np.can_cast(inputs.dtype, spec.dtype)
        )
        if not safe:
            raise InvalidInput(
                f"{path.name}: {spec.name} is {inputs.dtype}, {label}'s {spec.name!r} "
                f"wants {spec.dtype}"
            )
        inputs = inputs.astype(spec.dtype)
    return np.ascontiguousarray(inputs)


def _check_rows_and_axes(
    feeds: dict[str, np.ndarray], specs: list[ModelInput], path: Path, label: str
) -> None:
    """Every input has the same rows, and inputs that share a named free axis (``seq``)
    have the same size along it, as the model will require."""
    rows = {name: a.shape[0] for name, a in feeds.items()}
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{n} {r}" for n, r in rows.items())
        raise InvalidInput(f"{path.name}: the inputs of {label} need the same rows; got {counts}")
    seen: dict[str, tuple[str, int]] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if not isinstance(dim, str):
                continue
            size = int(feeds[spec.name].shape[axis])
            first = seen.setdefault(dim, (spec.name, size))
            if first[1] != size:
                raise InvalidInput(
                    f"{path.name}: {label}'s inputs share axis {dim!r}, but {first[0]} has "
                    f"{first[1]} along it and {spec.name} has {size}"
                )


def split_eval_data(
    data: EvalData, calibration_fraction: float = 0.5, seed: int = 0
) -> tuple[EvalData, EvalData]:
    """A seeded shuffle cut in two: (calibration, evaluation), disjoint and both non-empty."""
    if not 0.0 < calibration_fraction < 1.0:
        raise ConfigError(f"calibration fraction must be in (0, 1), not {calibration_fraction}")
    order = np.random.default_rng(seed).permutation(len(data))
    cut = min(max(1, round(len(data) * calibration_fraction)), len(data) - 1)
    return data.take(np.sort(order[:cut])), data.take(np.sort(order[cut:]))


def _shape_text(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "N" for d in shape) + "]"
