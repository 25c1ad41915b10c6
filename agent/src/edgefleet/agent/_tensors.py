"""Tensors in and out of HTTP bodies: JSON, .npy (one input) and .npz (an array per input)
decoded into checked feeds, outputs encoded.

Every refusal is an ``InvalidInput`` with a message a person can act on; a request bigger
than the model's inputs can hold is an ``InputTooLarge``. What a request may hold is known
before its body is read (:func:`body_limit`): the declared input shapes, with the free
dimensions of each input holding at most ``max_batch`` values together.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from edgefleet.shared.errors import InputTooLarge, InvalidInput

from ._runtime import InputSpec, LoadedModel, short_error

JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
NPY_TYPES = frozenset({NPY_TYPE, "application/octet-stream"})
# The free dimensions of one input (the batch, usually) hold at most this many values together.
MAX_BATCH = 1024
# Room for one number in JSON: "-2.2250738585072014e-308" is 24 characters, and
# pretty-printers add a comma, a newline and indentation. Decoded, each number costs a
# Python float (24 bytes) and a list slot (8), so a body within this bound costs at most
# a small multiple of its size, never the ~10x of an unbounded one.
JSON_BYTES_PER_VALUE = 48
JSON_ROOM = 4096  # the braces, the names and whitespace around them
NPY_HEADER_MAX = 4096  # np.save writes 128 bytes; numpy itself allows 10000
NPZ_TYPE = "application/x-npz"
# A zip entry's local header, its central-directory record and its name, and the archive's
# end record: np.savez writes about 200 bytes per entry with names of a few dozen.
NPZ_ENTRY_ROOM = 1024
NPZ_END_ROOM = 1024


def max_values(spec: InputSpec, max_batch: int = MAX_BATCH) -> int:
    """The most values one request may send for ``spec``."""
    return math.prod(d for d in spec.shape if d is not None) * max_batch


def body_limit(
    model: LoadedModel,
    *,
    as_json: bool,
    npy_input: str | None,
    max_batch: int = MAX_BATCH,
    as_npz: bool = False,
) -> int:
    """The largest body a request for ``model`` may have, known before it is read."""
    if as_json:
        return JSON_ROOM + sum(
            max_values(spec, max_batch) * JSON_BYTES_PER_VALUE for spec in model.inputs
        )
    if as_npz:
        return NPZ_END_ROOM + sum(
            NPZ_ENTRY_ROOM + NPY_HEADER_MAX + max_values(spec, max_batch) * spec.dtype.itemsize
            for spec in model.inputs
        )
    spec = _npy_spec(model, npy_input)
    return NPY_HEADER_MAX + max_values(spec, max_batch) * spec.dtype.itemsize


@dataclass(frozen=True)
class Call:
    """One inference request, decoded."""

    feeds: dict[str, np.ndarray]
    npy_output: str | None  # None: answer in JSON with every output


def parse_call(
    model: LoadedModel, body: bytes, content_type: str, query: Mapping[str, str], max_batch: int
) -> Call:
    """The feeds of a JSON, .npz or .npy body (``content_type`` is one of them)."""
    if content_type == JSON_TYPE:
        return Call(feeds_from_json(body, model, max_batch), None)
    output = pick_output(model, query.get("output"))
    if content_type == NPZ_TYPE:
        return Call(feeds_from_npz(body, model, max_batch), output)
    return Call(feeds_from_npy(body, model, query.get("input"), max_batch), output)


def encode_outputs(
    model: LoadedModel, outputs: Mapping[str, object], call: Call
) -> tuple[bytes, str]:
    """The answer's body and Content-Type: JSON with every output, or the one asked as .npy."""
    if call.npy_output is None:
        return json_bytes(outputs_document(model, outputs)), JSON_TYPE
    return npy_bytes(call.npy_output, outputs[call.npy_output]), NPY_TYPE


def json_bytes(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def feeds_from_json(
    body: bytes, model: LoadedModel, max_batch: int = MAX_BATCH
) -> dict[str, np.ndarray]:
    # Adjacent values are separated by commas, so a body with many more commas than the
    # inputs can hold values is too large, known before a Python float is made for each.
    allowed = sum(max_values(spec, max_batch) for spec in model.inputs)
    if body.count(b",") > 2 * allowed + JSON_ROOM:
        raise InputTooLarge(f"the body holds more values than the model's inputs ({allowed})")
    try:
        doc = json.loads(body)
    except ValueError as exc:  # not JSON, not UTF-8, or a number of thousands of digits
        raise InvalidInput(f"the body is not valid JSON: {short_error(exc)}") from exc
    except RecursionError as exc:  # nesting deeper than any tensor's
        raise InvalidInput("the body is not valid JSON: nested too deeply") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise InvalidInput('expected a JSON object {"inputs": {"<input name>": [...]}}')
    inputs: dict[str, object] = doc["inputs"]
    specs = _check_names(model, inputs)
    return {name: _array_from_json(specs[name], value, max_batch) for name, value in inputs.items()}


def _array_from_json(spec: InputSpec, value: object, max_batch: int) -> np.ndarray:
    # Converting in two steps because np.asarray(["1.5"], dtype=float32) would parse
    # strings and None would become NaN; the kind of the plain array catches both.
    _check_depth(spec, value)
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged nesting
        raise InvalidInput(f"input {spec.name!r} is not a rectangular array of numbers") from exc
    check_shape(spec, raw.shape, max_batch)
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


def _check_depth(spec: InputSpec, value: object) -> None:
    """Refuse lists nested deeper than the input's rank before numpy walks them."""
    depth = 0
    while isinstance(value, list) and value:
        depth += 1
        if depth > len(spec.shape):
            raise InvalidInput(
                f"input {spec.name!r} is nested deeper than its {len(spec.shape)} dimensions"
            )
        value = value[0]


def _npy_spec(model: LoadedModel, name: str | None) -> InputSpec:
    if name is None:
        if len(model.inputs) != 1:
            raise InvalidInput(
                f"the model has inputs {[i.name for i in model.inputs]}; "
                "choose one with ?input=NAME"
            )
        return model.inputs[0]
    return _check_names(model, [name], complete=False)[name]


def feeds_from_npy(
    body: bytes, model: LoadedModel, name: str | None, max_batch: int = MAX_BATCH
) -> dict[str, np.ndarray]:
    """One input from a .npy body. The header is read and its shape checked against the
    input before anything is allocated; the data must be exactly what the shape says."""
    spec = _npy_spec(model, name)
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(stream, max_header_size=NPY_HEADER_MAX)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(stream, max_header_size=NPY_HEADER_MAX)
        else:
            raise ValueError(f".npy version {version[0]}.{version[1]} is not supported")
    # numpy parses the header with tokenize and ast.literal_eval, and hostile headers get
    # ValueError, SyntaxError, tokenize.TokenError, RecursionError, MemoryError... out of
    # them (the fuzz tests found several): all of it means "not a .npy array", translated here.
    except Exception as exc:
        raise InvalidInput(f"the body is not a .npy array: {short_error(exc)}") from exc
    shape, fortran_order, dtype = header
    if dtype.hasobject or dtype.kind not in "biufc" or dtype.itemsize == 0:
        raise InvalidInput(f"the .npy array holds {dtype}; send numbers")
    check_shape(spec, shape, max_batch)
    count = math.prod(shape)
    offset = stream.tell()
    if len(body) - offset != count * dtype.itemsize:
        raise InvalidInput(
            f"the .npy header says {list(shape)} of {dtype} ({count * dtype.itemsize} bytes); "
            f"the body holds {len(body) - offset} bytes of data"
        )
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    array = array.reshape(shape, order="F" if fortran_order else "C")
    return {spec.name: np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))}


def feeds_from_npz(
    body: bytes, model: LoadedModel, max_batch: int = MAX_BATCH
) -> dict[str, np.ndarray]:
    """Every input from an .npz body (``np.savez``: one ``<input>.npy`` per input, stored
    uncompressed). Compressed entries are refused, so no entry can grow past the body's
    bounded size; each entry is then read as a .npy body for its input."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"the body is not an .npz archive: {short_error(exc)}") from exc
    if len(entries) > len(model.inputs):
        raise InvalidInput(
            f"the .npz holds {len(entries)} arrays; the model has {len(model.inputs)} inputs"
        )
    names = [e.filename.removesuffix(".npy") for e in entries]
    if len(set(names)) != len(names):
        raise InvalidInput("the .npz holds the same array twice")
    _check_names(model, names)
    feeds: dict[str, np.ndarray] = {}
    with archive:
        for entry, name in zip(entries, names, strict=True):
            if entry.compress_type != zipfile.ZIP_STORED or entry.file_size != entry.compress_size:
                raise InvalidInput(
                    f"the .npz entry for {name!r} is compressed; send np.savez, not "
                    "np.savez_compressed"
                )
            try:
                data = archive.read(entry)
            except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
                raise InvalidInput(
                    f"the .npz entry for {name!r} cannot be read: {short_error(exc)}"
                ) from exc
            feeds.update(feeds_from_npy(data, model, name, max_batch))
    return feeds


def _check_names(
    model: LoadedModel, names: Iterable[str], *, complete: bool = True
) -> dict[str, InputSpec]:
    specs = {i.name: i for i in model.inputs}
    given = set(names)
    unknown = sorted(given - specs.keys())
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; the model's inputs are {sorted(specs)}")
    missing = sorted(specs.keys() - given)
    if missing and complete:
        raise InvalidInput(
            "missing input(s) "
            + ", ".join(f"{n!r} ({specs[n].dtype} {_shape_text(specs[n].shape)})" for n in missing)
        )
    return specs


def check_feeds(
    model: LoadedModel, feeds: dict[str, np.ndarray], max_batch: int = MAX_BATCH
) -> None:
    """Refuse, with a message a person can act on, anything ONNX Runtime would reject."""
    specs = _check_names(model, feeds)
    for name, array in feeds.items():
        spec = specs[name]
        if array.dtype != spec.dtype:
            raise InvalidInput(f"input {name!r} is {array.dtype}; the model wants {spec.dtype}")
        check_shape(spec, array.shape, max_batch)


def check_shape(spec: InputSpec, shape: tuple[int, ...], max_batch: int = MAX_BATCH) -> None:
    """The shape fits the input: its rank, its fixed dimensions, at most ``max_batch``
    values in its free ones."""
    name, want = spec.name, _shape_text(spec.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r} has a negative dimension in {list(shape)}")
    if len(shape) != len(spec.shape):
        raise InvalidInput(
            f"input {name!r} has shape {list(shape)} ({len(shape)} dimensions); "
            f"the model wants {want}"
        )
    for axis, (got, fixed) in enumerate(zip(shape, spec.shape, strict=True)):
        if fixed is not None and got != fixed:
            raise InvalidInput(
                f"input {name!r} has {got} in dimension {axis}, the model wants {fixed} "
                f"(shape {list(shape)}, expected {want})"
            )
    free = math.prod(got for got, fixed in zip(shape, spec.shape, strict=True) if fixed is None)
    if free > max_batch:
        raise InputTooLarge(
            f"input {name!r} has shape {list(shape)}: {free} in its free dimensions "
            f"{want}, more than the limit of {max_batch}"
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
