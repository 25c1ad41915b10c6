"""The local inference endpoint against real ONNX Runtime sessions: JSON, .npy, errors, hot swap."""

from __future__ import annotations

import functools
import io
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgefleet.agent._admission import InferenceLimits
from edgefleet.agent._runtime import LoadedModel, load_model
from edgefleet.agent._serving import InferenceServer
from edgefleet.agent._slot import ModelSlot
from edgefleet.agent._telemetry import RequestStats
from edgefleet.harness import digits, write_digits_model
from edgefleet.shared import ModelRef, RuntimeSettings


def load(path: Path, deployment_id: str, version: str = "1") -> LoadedModel:
    return load_model(
        path,
        ref=ModelRef(name="digits", version=version),
        deployment_id=deployment_id,
        sha256="0" * 64,
        runtime=RuntimeSettings(intra_op_threads=1),
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, LoadedModel]:
    root = tmp_path_factory.mktemp("models")
    first = load(write_digits_model(root / "m1.onnx", seed=0), "d1", "1")
    second = load(write_digits_model(root / "m2.onnx", seed=1), "d2", "2")
    return first, second


@pytest.fixture
def slot(models: tuple[LoadedModel, LoadedModel]) -> ModelSlot:
    return ModelSlot(models[0])


@pytest.fixture
def stats() -> RequestStats:
    return RequestStats()


@pytest.fixture
def server(slot: ModelSlot, stats: RequestStats) -> Iterator[InferenceServer]:
    with InferenceServer(slot, stats) as s:
        yield s


@pytest.fixture
def http(server: InferenceServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def rows(n: int) -> np.ndarray:
    return digits()[0][:n]


def assert_invalid(response: httpx.Response, *words: str) -> None:
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert body["code"] == "invalid_input"
    for word in words:
        assert word in body["error"], body["error"]


# -- happy paths ------------------------------------------------------------------------


def test_json_infer_returns_probabilities_matching_a_direct_run(
    http: httpx.Client, models: tuple[LoadedModel, LoadedModel]
) -> None:
    x = rows(8)
    r = http.post("/v1/infer", json={"inputs": {"input": x.tolist()}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {
        "name": "digits",
        "version": "1",
        "variant": "fp32",
        "deployment_id": "d1",
    }
    probs = np.asarray(body["outputs"]["probs"], dtype=np.float32)
    assert probs.shape == (8, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, models[0].session.run(None, {"input": x})[0], rtol=1e-6)
    assert r.headers["X-Edgefleet-Model"] == "digits:1/fp32"
    assert r.headers["X-Edgefleet-Deployment"] == "d1"


def test_npy_infer_round_trip(http: httpx.Client, models: tuple[LoadedModel, LoadedModel]) -> None:
    x = rows(5)
    r = http.post("/v1/infer", content=npy(x), headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/x-npy"
    assert r.headers["X-Edgefleet-Deployment"] == "d1"
    out = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert out.dtype == np.float32 and out.shape == (5, 10)
    np.testing.assert_array_equal(out, models[0].run({"input": x})["probs"])


def test_npy_with_named_input_and_output(http: httpx.Client) -> None:
    r = http.post(
        "/v1/infer?input=input&output=probs",
        content=npy(rows(2)),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert np.load(io.BytesIO(r.content)).shape == (2, 10)
    assert r.headers["X-Edgefleet-Output"] == "probs"


def test_metadata_and_health(http: httpx.Client) -> None:
    meta = http.get("/v1/model").json()
    assert meta["deployment_id"] == "d1"
    assert meta["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 64]}]
    assert meta["outputs"] == ["probs"]
    assert http.get("/healthz").json() == {"ok": True, "serving": True}


def test_no_model_gives_503_and_is_not_recorded(stats: RequestStats) -> None:
    slot = ModelSlot()
    with InferenceServer(slot, stats) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/healthz").json() == {"ok": True, "serving": False}
        r = http.get("/v1/model")
        assert r.status_code == 503
        assert r.json()["error"] == "no model is serving yet"
        r = http.post("/v1/infer", json={"inputs": {"input": rows(1).tolist()}})
        assert r.status_code == 503
    assert stats.drain() == []


# -- bad requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({"pixels": [[0.0] * 64]}, ["unknown input", "pixels", "'input'"]),
        ({}, ["missing input", "'input'", "float32 [?, 64]"]),
        ({"input": [0.0] * 64}, ["shape [64]", "[?, 64]"]),
        ({"input": [[0.0] * 63]}, ["63", "dimension 1", "wants 64"]),
        ({"input": [["a"] * 64]}, ["strings", "float32"]),
        ({"input": [["1.5"] * 64]}, ["strings"]),
        ({"input": [[None] * 64]}, ["nulls"]),
        ({"input": [[0.0] * 64, [0.0] * 3]}, ["rectangular"]),
    ],
    ids=[
        "wrong-name",
        "missing",
        "wrong-rank",
        "width-63",
        "strings",
        "numeric-strings",
        "nulls",
        "ragged",
    ],
)
def test_bad_json_inputs_are_4xx_with_a_message(
    http: httpx.Client, inputs: dict[str, object], words: list[str]
) -> None:
    assert_invalid(http.post("/v1/infer", json={"inputs": inputs}), *words)


def test_bad_npy_inputs_are_4xx_with_a_message(http: httpx.Client) -> None:
    headers = {"Content-Type": "application/x-npy"}
    x = rows(2)
    assert_invalid(
        http.post("/v1/infer", content=npy(x.astype(np.float64)), headers=headers),
        "float64",
        "float32",
    )
    assert_invalid(http.post("/v1/infer", content=npy(x[:, :63]), headers=headers), "63")
    assert_invalid(http.post("/v1/infer", content=b"not an array", headers=headers), ".npy")
    assert_invalid(http.post("/v1/infer", content=npy(x)[:-10], headers=headers), ".npy")
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert_invalid(http.post("/v1/infer", content=objects.getvalue(), headers=headers), ".npy")
    assert_invalid(
        http.post("/v1/infer?input=nope", content=npy(x), headers=headers), "unknown input"
    )
    assert_invalid(
        http.post("/v1/infer?output=nope", content=npy(x), headers=headers), "unknown output"
    )


def test_non_json_body_is_400(http: httpx.Client) -> None:
    r = http.post("/v1/infer", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert_invalid(r, "not valid JSON")
    assert_invalid(http.post("/v1/infer", json=[1, 2, 3]), '{"inputs"')


def test_protocol_errors(slot: ModelSlot, stats: RequestStats) -> None:
    with InferenceServer(slot, stats, limits=InferenceLimits(max_body_bytes=1024)) as server:
        with httpx.Client(base_url=server.url) as http:
            r = http.post(
                "/v1/infer", content=b"x" * 2048, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 413 and r.json()["code"] == "too_large"
        with httpx.Client(base_url=server.url) as http:
            # A generator body goes out chunked, with no Content-Length.
            r = http.post(
                "/v1/infer", content=iter([b"{}"]), headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 411
        with httpx.Client(base_url=server.url) as http:
            r = http.post("/v1/infer", content=b"{}", headers={"Content-Type": "text/plain"})
            assert r.status_code == 415 and "application/json" in r.json()["error"]
            assert http.get("/nowhere").status_code == 404
            r = http.get("/v1/infer")
            assert r.status_code == 405 and r.headers["Allow"] == "POST"
            assert http.post("/healthz", content=b"x").status_code == 405
            # The connection still works after the errors above.
            assert http.post("/v1/infer", json={"inputs": {"input": rows(1).tolist()}}).is_success


def test_runtime_failure_is_500_and_counted(tmp_path: Path, stats: RequestStats) -> None:
    # Reshape to [3, -1] only works when N*4 divides by 3: valid input by the
    # signature, a failure inside ONNX Runtime for N=1.
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, -1])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, None])],
        [shape],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "reshape.onnx"
    onnx.save(proto, path)
    model = load(path, "d-reshape")
    with (
        InferenceServer(ModelSlot(model), stats) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        ok = http.post("/v1/infer", json={"inputs": {"x": [[1, 2, 3, 4]] * 3}})
        assert ok.status_code == 200, ok.text
        r = http.post("/v1/infer", json={"inputs": {"x": [[1, 2, 3, 4]]}})
        assert r.status_code == 500
        assert r.json()["code"] == "inference_failed" and r.json()["error"]
        assert r.headers["X-Edgefleet-Deployment"] == "d-reshape"
    [entry] = stats.drain()
    assert (entry.requests, entry.errors) == (2, 1)


# -- telemetry and hot swap -------------------------------------------------------------


def test_every_request_is_recorded_against_its_model(
    http: httpx.Client, stats: RequestStats
) -> None:
    good = {"inputs": {"input": rows(1).tolist()}}
    for _ in range(7):
        assert http.post("/v1/infer", json=good).status_code == 200
    for _ in range(3):
        assert http.post("/v1/infer", json={"inputs": {"input": [[0.0] * 63]}}).status_code == 400
    http.get("/v1/model")  # not an inference request
    [entry] = stats.drain()
    assert entry.deployment_id == "d1" and str(entry.model) == "digits:1/fp32"
    assert (entry.requests, entry.errors) == (10, 3)
    assert sum(entry.latency_counts) == 10
    assert entry.p50_ms is not None and entry.p50_ms <= entry.p99_ms  # type: ignore[operator]
    assert stats.drain() == []


def test_hot_swap_loses_no_request(
    server: InferenceServer,
    slot: ModelSlot,
    stats: RequestStats,
    models: tuple[LoadedModel, LoadedModel],
) -> None:
    x = rows(4)
    expected = {m.deployment_id: m.run({"input": x})["probs"] for m in models}
    body = npy(x)
    workers, per_worker, swaps, per_swap = 4, 75, 20, 10
    lock = threading.Condition()
    done = 0
    finished = 0
    failures: list[str] = []
    seen: Counter[str] = Counter()

    def client() -> None:
        nonlocal done, finished
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for _ in range(per_worker):
                    r = http.post(
                        "/v1/infer", content=body, headers={"Content-Type": "application/x-npy"}
                    )
                    deployment = r.headers.get("X-Edgefleet-Deployment", "?")
                    with lock:
                        if r.status_code != 200:
                            failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        elif not np.allclose(np.load(io.BytesIO(r.content)), expected[deployment]):
                            failures.append(f"output does not match {deployment}")
                        seen[deployment] += 1
                        done += 1
                        lock.notify_all()
        except Exception as exc:  # the main thread must hear of it rather than wait forever
            with lock:
                failures.append(repr(exc))
        finally:
            with lock:
                finished += 1
                lock.notify_all()

    def answered(count: int) -> bool:
        return done >= count or finished == workers

    threads = [threading.Thread(target=client) for _ in range(workers)]
    for t in threads:
        t.start()
    for i in range(swaps):
        slot.swap(models[(i + 1) % 2])
        # Let some requests through on the new model before the next swap.
        with lock:
            lock.wait_for(functools.partial(answered, (i + 1) * per_swap), timeout=60)
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert done == workers * per_worker
    assert set(seen) == {"d1", "d2"}
    drained = {s.deployment_id: s for s in stats.drain()}
    assert sum(s.requests for s in drained.values()) == workers * per_worker
    assert sum(s.errors for s in drained.values()) == 0
    assert {d: s.requests for d, s in drained.items()} == dict(seen)


def test_swap_returns_the_old_model(models: tuple[LoadedModel, LoadedModel]) -> None:
    slot = ModelSlot()
    assert slot.swap(models[0]) is None
    assert slot.swap(models[1]) is models[0]
    assert slot.get() is models[1]


def test_stop_closes_keep_alive_connections(slot: ModelSlot, stats: RequestStats) -> None:
    server = InferenceServer(slot, stats)
    server.start()
    url = server.url
    with httpx.Client(base_url=url) as http:
        assert http.get("/healthz").status_code == 200
        server.stop()
        with pytest.raises(httpx.TransportError):
            http.get("/healthz")
    with pytest.raises(RuntimeError):
        _ = server.port
