"""Tensors in and out of HTTP bodies: JSON and .npy decoded into checked feeds, outputs encoded.

Every refusal is an ``InvalidInput`` with a message a person can act on.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping

import numpy as np

from edgefleet.shared.errors import InvalidInput

from ._runtime import InputSpec, LoadedModel, short_error


def feeds_from_json(body: bytes, model: LoadedModel) -> dict[str, np.ndarray]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise InvalidInput('expected a JSON object {"inputs": {"<input name>": [...]}}')
    inputs: dict[str, object] = doc["inputs"]
    specs = _check_names(model, inputs)
    return {name: _array_from_json(specs[name], value) for name, value in inputs.items()}


def _array_from_json(spec: InputSpec, value: object) -> np.ndarray:
    # Converting in two steps because np.asarray(["1.5"], dtype=float32) would parse
    # strings and None would become NaN; the kind of the plain array catches both.
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise InvalidInput(f"input {spec.name!r} is not a rectangular array of numbers") from exc
    allowed = {"b": "b", "i": "biu", "u": "biu", "f": "biuf", "c": "biufc"}.get(spec.dtype.kind)
    if allowed is None or raw.dtype.kind not in allowed:
        what = {"U": "strings", "O": "nulls or mixed values"}.get(raw.dtype.kind, str(raw.dtype))
        raise InvalidInput(
            f"input {spec.name!r} must hold {spec.dtype} values; the JSON gave {what}"
        )
    if spec.dtype.kind in "iu" and raw.size:
        limits = np.iinfo(spec.dtype)
        if raw.min() < limits.min or raw.max() > limits.max:
            raise InvalidInput(f"input {spec.name!r} has values outside the range of {spec.dtype}")
    return raw.astype(spec.dtype, copy=False)


def feeds_from_npy(body: bytes, model: LoadedModel, name: str | None) -> dict[str, np.ndarray]:
    if name is None:
        if len(model.inputs) != 1:
            raise InvalidInput(
                f"the model has inputs {[i.name for i in model.inputs]}; "
                "choose one with ?input=NAME"
            )
        name = model.inputs[0].name
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise InvalidInput(f"the body is not a .npy array: {short_error(exc)}") from exc
    if not isinstance(array, np.ndarray):  # np.load also opens .npz archives
        raise InvalidInput("the body is an .npz archive; send a single .npy array")
    return {name: np.ascontiguousarray(array)}


def _check_names(model: LoadedModel, names: Iterable[str]) -> dict[str, InputSpec]:
    specs = {i.name: i for i in model.inputs}
    given = set(names)
    unknown = sorted(given - specs.keys())
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; the model's inputs are {sorted(specs)}")
    missing = sorted(specs.keys() - given)
    if missing:
        raise InvalidInput(
            "missing input(s) "
            + ", ".join(f"{n!r} ({specs[n].dtype} {_shape_text(specs[n].shape)})" for n in missing)
        )
    return specs


def check_feeds(model: LoadedModel, feeds: dict[str, np.ndarray]) -> None:
    """Refuse, with a message a person can act on, anything ONNX Runtime would reject."""
    specs = _check_names(model, feeds)
    for name, array in feeds.items():
        spec = specs[name]
        want = _shape_text(spec.shape)
        if array.dtype != spec.dtype:
            raise InvalidInput(f"input {name!r} is {array.dtype}; the model wants {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise InvalidInput(
                f"input {name!r} has shape {list(array.shape)} ({array.ndim} dimensions); "
                f"the model wants {want}"
            )
        for axis, (got, fixed) in enumerate(zip(array.shape, spec.shape, strict=True)):
            if fixed is not None and got != fixed:
                raise InvalidInput(
                    f"input {name!r} has {got} in dimension {axis}, the model wants {fixed} "
                    f"(shape {list(array.shape)}, expected {want})"
                )


def pick_output(model: LoadedModel, name: str | None) -> str:
    if name is None:
        if not model.output_names:
            raise InvalidInput("the model has no outputs")
        return model.output_names[0]
    if name not in model.output_names:
        raise InvalidInput(
            f"unknown output {name!r}; the model's outputs are {list(model.output_names)}"
        )
    return name


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def jsonable(value: object) -> object:
    # Outputs are usually arrays, but ORT returns lists of dicts for sequence/map
    # outputs (e.g. scikit-learn's ZipMap).
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def npy_bytes(name: str, value: object) -> bytes:
    buffer = io.BytesIO()
    try:
        np.save(buffer, np.asarray(value), allow_pickle=False)
    except ValueError as exc:  # object arrays (sequence/map outputs) cannot be .npy
        raise InvalidInput(f"output {name!r} is not a tensor; ask for JSON instead") from exc
    return buffer.getvalue()


def outputs_document(model: LoadedModel, outputs: Mapping[str, object]) -> dict[str, object]:
    """The JSON answer to an inference request: which model answered, and every output."""
    return {
        "model": {
            "name": model.ref.name,
            "version": model.ref.version,
            "variant": model.ref.variant,
            "deployment_id": model.deployment_id,
        },
        "outputs": {name: jsonable(value) for name, value in outputs.items()},
    }
