"""Property tests of the agent's tensor codec: any body, JSON or .npy, gives feeds that pass
``check_feeds`` or an ``InvalidInput`` (``InputTooLarge`` among them), the errors the HTTP
layer turns into 400 and 413, never another exception.

Deterministic (derandomized, no example database) and sized to run in a few seconds."""

from __future__ import annotations

import functools
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefleet.agent._runtime import LoadedModel, load_model
from edgefleet.agent._tensors import (
    JSON_TYPE,
    NPY_TYPE,
    check_feeds,
    parse_call,
)
from edgefleet.harness import write_digits_model
from edgefleet.shared import ModelRef, RuntimeSettings
from edgefleet.shared.errors import InvalidInput

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_BATCH = 64  # small, so the fuzzer reaches the limit


@functools.cache
def model() -> LoadedModel:
    """The digits model: one input, float32 [?, 64]."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-model-"))
    return load_model(
        write_digits_model(folder / "m.onnx", seed=0),
        ref=ModelRef(name="digits", version="1"),
        deployment_id="d",
        sha256="0" * 64,
        runtime=RuntimeSettings(intra_op_threads=1),
    )


def decode(body: bytes, content_type: str, query: dict[str, str] | None = None) -> None:
    """What the server does with a body; only the codec's typed errors may leave."""
    try:
        call = parse_call(model(), body, content_type, query or {}, MAX_BATCH)
        check_feeds(model(), call.feeds, MAX_BATCH)
    except InvalidInput:
        pass


numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
)
json_values = st.recursive(
    numbers | st.none() | st.text(max_size=5),
    lambda kids: (
        st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=40,
)
dtypes = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i8", "|u1", "|b1", "<c8", "|S3", "<U2"])
arrays = hnp.arrays(
    dtype=dtypes,
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=70),
    elements=None,
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    shape_ok = draw(st.booleans())
    if shape_ok:  # something near right: rows of numbers, perhaps the wrong width or count
        rows = draw(st.integers(min_value=0, max_value=MAX_BATCH + 2))
        width = draw(st.sampled_from([64, 63, 65, 0]))
        value: Any = np.zeros((rows, width)).tolist()
    else:
        value = draw(json_values)
    name = draw(st.sampled_from(["input", "x", ""]))
    doc = draw(st.sampled_from([{"inputs": {name: value}}, {"inputs": value}, value]))
    return json.dumps(doc).encode()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@st.composite
def npy_bodies(draw: st.DrawFn) -> bytes:
    body = bytearray(npy_bytes(draw(arrays)))
    damage = draw(st.sampled_from(["none", "flip", "truncate", "extend"]))
    if damage == "flip" and body:
        at = draw(st.integers(min_value=0, max_value=len(body) - 1))
        body[at] = draw(st.integers(min_value=0, max_value=255))
    elif damage == "truncate":
        del body[draw(st.integers(min_value=0, max_value=len(body))) :]
    elif damage == "extend":
        body += draw(st.binary(max_size=64))
    return bytes(body)


header_values = st.sampled_from(
    ["'<f4'", "'|O'", "'<V0'", "[('a', '<f4')]", "'<f4', 'x': 1", "None", "'" + "<" * 40 + "'"]
)
shapes = st.lists(
    st.integers(min_value=-3, max_value=2**63 - 1) | st.sampled_from([0, 1, 64, 65]), max_size=4
).map(lambda dims: "(" + "".join(f"{d}, " for d in dims) + ")")


@st.composite
def npy_headers(draw: st.DrawFn) -> bytes:
    """Hand-made headers: what np.save would never write."""
    descr, order = draw(header_values), draw(st.sampled_from(["False", "True", "1"]))
    shape = draw(shapes | st.text(max_size=20))
    text = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}".encode(
        "utf-8", "replace"
    )
    version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"]))
    size = len(text).to_bytes(2 if version == b"\x01\x00" else 4, "little")
    return b"\x93NUMPY" + version + size + text + draw(st.binary(max_size=300))


@FUZZ
@given(st.binary(max_size=500))
def test_any_bytes_as_json_or_npy(body: bytes) -> None:
    decode(body, JSON_TYPE)
    decode(body, NPY_TYPE)
    decode(b"\x93NUMPY" + body, NPY_TYPE)


@FUZZ
@given(json_bodies())
def test_json_bodies(body: bytes) -> None:
    decode(body, JSON_TYPE)


@FUZZ
@given(npy_bodies(), st.sampled_from([{}, {"input": "input"}, {"input": "nope"}, {"output": "x"}]))
def test_npy_bodies(body: bytes, query: dict[str, str]) -> None:
    decode(body, NPY_TYPE, query)


@FUZZ
@given(npy_headers())
def test_npy_headers(body: bytes) -> None:
    decode(body, NPY_TYPE)


def test_a_good_body_of_each_kind_decodes() -> None:
    x = np.zeros((2, 64), np.float32)
    call = parse_call(model(), npy_bytes(x), NPY_TYPE, {}, MAX_BATCH)
    check_feeds(model(), call.feeds, MAX_BATCH)
    body = json.dumps({"inputs": {"input": x.tolist()}}).encode()
    check_feeds(model(), parse_call(model(), body, JSON_TYPE, {}, MAX_BATCH).feeds, MAX_BATCH)
