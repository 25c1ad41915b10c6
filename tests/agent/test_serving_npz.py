"""A model with several inputs served by the real inference server: JSON takes every input,
and so does the binary form, an .npz body (``np.savez``: one array per input), bounded by
the inputs' shapes like the .npy form; bad archives get a 4xx, never a 500."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, save

from edgefleet.agent._runtime import LoadedModel, load_model
from edgefleet.agent._serving import InferenceServer
from edgefleet.agent._slot import ModelSlot
from edgefleet.agent._telemetry import RequestStats
from edgefleet.agent._tensors import NPZ_TYPE
from edgefleet.shared import ModelRef, RuntimeSettings


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """ids (int64, free batch and sequence) and mask (bool) in; ids where mask, else 0."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("Where", ["mask", "ids_f", "zero"], ["out"]),
        ],
        "two-inputs",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    path = Path(tmp_path_factory.mktemp("m")) / "two.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return load_model(
        path,
        ref=ModelRef(name="two", version="1"),
        deployment_id="d1",
        sha256="0" * 64,
        runtime=RuntimeSettings(intra_op_threads=1),
    )


@pytest.fixture
def http(model: LoadedModel) -> Iterator[httpx.Client]:
    with (
        InferenceServer(ModelSlot(model), RequestStats()) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield client


IDS = np.array([[5, 6, 7], [8, 9, 10]], np.int64)
MASK = np.array([[True, True, False], [True, False, False]])
EXPECTED = np.array([[5, 6, 0], [8, 0, 0]], np.float32)


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_json_takes_every_input(http: httpx.Client) -> None:
    body = {"inputs": {"ids": IDS.tolist(), "mask": MASK.tolist()}}
    reply = http.post("/v1/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert np.array_equal(np.array(reply.json()["outputs"]["out"]), EXPECTED)


def test_an_npz_body_takes_every_input(http: httpx.Client) -> None:
    reply = http.post(
        "/v1/infer", content=_npz(ids=IDS, mask=MASK), headers={"Content-Type": NPZ_TYPE}
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Edgefleet-Output"] == "out"
    assert np.array_equal(np.load(io.BytesIO(reply.content)), EXPECTED)


def _compressed() -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, ids=IDS, mask=MASK)
    return buffer.getvalue()


def _twice() -> bytes:
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore", UserWarning)  # a duplicate name, on purpose
        for name in ("ids.npy", "ids.npy"):
            with archive.open(name, "w") as entry:
                np.save(entry, IDS)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (_npz(ids=IDS), 400, "missing input(s) 'mask'"),
        (_npz(ids=IDS, mask=MASK, extra=IDS), 400, "holds 3 arrays; the model has 2"),
        (_npz(ids=IDS, other=MASK), 400, "unknown input(s) ['other']"),
        (_npz(ids=IDS.astype(np.float32), mask=MASK), 400, "ids"),
        (_compressed(), 400, "np.savez_compressed"),
        (_twice(), 400, "the same array twice"),
        (b"PK\x03\x04 not really a zip", 400, "not an .npz archive"),
        (_npz(ids=np.zeros((2, 2000), np.int64), mask=np.ones((2, 2000), bool)), 413, ""),
    ],
    ids=["missing", "too-many", "unknown", "wrong-dtype", "compressed", "duplicate",
         "not-a-zip", "too-large"],
)  # fmt: skip
def test_bad_npz_bodies_are_refused(
    http: httpx.Client, body: bytes, status: int, words: str
) -> None:
    reply = http.post("/v1/infer", content=body, headers={"Content-Type": NPZ_TYPE})
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]
