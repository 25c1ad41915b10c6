"""Hostile requests to the real inference server on a free loopback port: each gets a 4xx
or a 503 with a JSON body and a code, never a 500 or a traceback; bodies larger than the
model's inputs allow are refused before they are read; concurrency and connections are
capped; only the endpoint's own Host names are answered."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgefleet.agent._admission import InferenceLimits
from edgefleet.agent._runtime import LoadedModel, load_model
from edgefleet.agent._serving import InferenceServer
from edgefleet.agent._slot import ModelSlot
from edgefleet.agent._telemetry import RequestStats
from edgefleet.agent._tensors import MAX_BATCH
from edgefleet.harness import digits, wait_until, write_digits_model
from edgefleet.shared import ModelRef, RuntimeSettings


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = write_digits_model(Path(tmp_path_factory.mktemp("m")) / "m.onnx", seed=0)
    return load_model(
        path,
        ref=ModelRef(name="digits", version="1"),
        deployment_id="d1",
        sha256="0" * 64,
        runtime=RuntimeSettings(intra_op_threads=1),
    )


def serve(model: LoadedModel, **limits: Any) -> InferenceServer:
    return InferenceServer(ModelSlot(model), RequestStats(), limits=InferenceLimits(**limits))


@pytest.fixture
def server(model: LoadedModel) -> Iterator[InferenceServer]:
    with serve(model) as s:
        yield s


def raw(port: int, request: bytes, *, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        return read_response(conn)


def read_response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def post(port: int, body: bytes, content_type: str, *, length: int | None = None) -> bytes:
    declared = len(body) if length is None else length
    return (
        f"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode() + body


def npy_header(shape: str, descr: str = "<f4", version: bytes = b"\x01\x00") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    size = len(header).to_bytes(2 if version == b"\x01\x00" else 4, "little")
    return b"\x93NUMPY" + version + size + header


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def assert_refused(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
    got, headers, body = answer
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == code
    assert b"Traceback" not in body


NPY_CASES = [
    # the body, the status, the code
    (npy_header(f"({10**12}, 64)"), 413, "input_too_large"),
    (npy_header(f"({MAX_BATCH + 1}, 64)") + bytes(16), 413, "input_too_large"),
    (npy_header("(4611686018427387904, 4611686018427387904)"), 400, "invalid_input"),
    (npy_header(f"(1, {2**62})"), 400, "invalid_input"),
    (npy_header("(-1, 64)"), 400, "invalid_input"),
    (npy_header("(2, 64)") + bytes(100), 400, "invalid_input"),  # less data than the shape
    (npy_header("(1, 64)") + bytes(512), 400, "invalid_input"),  # more data than the shape
    (npy_header("(1, 64)", descr="|O") + bytes(512), 400, "invalid_input"),
    (npy_header("(1, 64)", descr="<V0"), 400, "invalid_input"),
    (npy_header("(1, 64)", descr="<f8") + bytes(512), 400, "invalid_input"),
    (npy_header("(1, 64)", version=b"\x03\x00") + bytes(256), 400, "invalid_input"),
    (npy_header("[" * 500 + "]" * 500), 400, "invalid_input"),
    (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 200, 400, "invalid_input"),
    (b"not an npy file at all", 400, "invalid_input"),
]


@pytest.mark.parametrize(("body", "status", "code"), NPY_CASES)
def test_hostile_npy_bodies(server: InferenceServer, body: bytes, status: int, code: str) -> None:
    assert_refused(raw(server.port, post(server.port, body, "application/x-npy")), status, code)


def test_a_well_formed_fortran_order_npy_still_serves(server: InferenceServer) -> None:
    x = np.asfortranarray(digits()[0][:3])
    status, _, body = raw(server.port, post(server.port, npy(x), "application/x-npy"))
    assert status == 200, body


DEEP = 100_000
ROWS_OVER = json.dumps({"inputs": {"input": [[0.0] * 64] * (MAX_BATCH + 1)}}).encode()
JSON_CASES = [
    (b"[" * DEEP + b"]" * DEEP, 400, "invalid_input"),
    (b'{"inputs": {"input": ' + b"[" * 900 + b"1" + b"]" * 900 + b"}}", 400, "invalid_input"),
    (b'{"inputs": {"input": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}}", 400, "invalid_input"),
    (b'{"inputs": {"input": [[1e999999]]}}', 400, "invalid_input"),
    (b'{"inputs": {"input": [[' + b"9" * 5000 + b"]]}}", 400, "invalid_input"),
    (ROWS_OVER, 413, "input_too_large"),
    (b'{"inputs": {"input": [[{"a": 1}]]}}', 400, "invalid_input"),
    (b'{"inputs": {"input": [' + b"0," * 200_000 + b"0]}}", 413, "input_too_large"),
    (b"\xff\xfe{", 400, "invalid_input"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "code"), JSON_CASES)
def test_hostile_json_bodies(server: InferenceServer, body: bytes, status: int, code: str) -> None:
    assert_refused(raw(server.port, post(server.port, body, "application/json")), status, code)


@pytest.mark.parametrize("content_type", ["application/json", "application/x-npy"])
def test_a_body_over_the_models_limit_is_refused_before_it_is_read(
    server: InferenceServer, content_type: str
) -> None:
    # 57 MB declared, nothing sent: the answer comes without waiting for the body
    request = post(server.port, b"", content_type, length=57_000_000)
    assert_refused(raw(server.port, request, timeout=5), 413, "too_large")


@pytest.mark.parametrize("length", ["²", "1" * 30, "-5", "12, 12", "0x10"])
def test_malformed_content_lengths(server: InferenceServer, length: str) -> None:
    request = (
        f"POST /v1/infer HTTP/1.1\r\nHost: localhost:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    assert_refused(raw(server.port, request), 400, "bad_request")


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost:{port}", 200),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
        ("LOCALHOST", 200),
        ("127.0.0.1", 200),
        ("evil.example:{port}", 400),
        ("evil.example", 400),
        ("127.0.0.1:1", 400),
        ("localhost.evil.example:{port}", 400),
        ("user@localhost:{port}", 400),
        ("", 400),
    ],
)
def test_only_the_endpoints_own_names_are_answered(
    server: InferenceServer, host: str, status: int
) -> None:
    head = f"Host: {host.format(port=server.port)}\r\n"
    got, _, body = raw(server.port, f"GET /v1/model HTTP/1.1\r\n{head}\r\n".encode())
    assert got == status, body
    if status == 400:
        assert json.loads(body)["code"] == "bad_host"


def test_no_host_or_two_hosts_are_refused(server: InferenceServer) -> None:
    assert_refused(raw(server.port, b"GET /healthz HTTP/1.0\r\n\r\n"), 400, "bad_host")
    two = f"GET /healthz HTTP/1.1\r\nHost: localhost:{server.port}\r\nHost: evil.example\r\n\r\n"
    assert_refused(raw(server.port, two.encode()), 400, "bad_host")


def test_a_full_endpoint_answers_503_with_retry_after(model: LoadedModel) -> None:
    body = json.dumps({"inputs": {"input": digits()[0][:1].tolist()}}).encode()
    with serve(model, max_inflight=1, busy_wait_s=0.05) as server:
        # the first request holds the one slot: its headers are in, half its body is not
        holder = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        holder.sendall(post(server.port, body, "application/json")[: -len(body) // 2])

        def busy() -> tuple[int, dict[str, str], bytes] | None:
            answer = raw(server.port, post(server.port, body, "application/json"))
            return answer if answer[0] == 503 else None

        _, headers, refused = wait_until(busy, timeout=10, what="a 503 while busy", every=0.05)
        assert json.loads(refused)["code"] == "busy" and headers["retry-after"] == "1"
        holder.sendall(body[-len(body) // 2 :])
        assert read_response(holder)[0] == 200
        holder.close()
        assert raw(server.port, post(server.port, body, "application/json"))[0] == 200


def test_connections_over_the_cap_get_503_and_a_freed_one_is_reused(model: LoadedModel) -> None:
    with serve(model, max_connections=2) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        status, headers, body = raw(server.port, b"")
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["code"] == "busy"
        idle.pop().close()
        url = f"http://127.0.0.1:{server.port}/healthz"

        def served() -> bool:
            try:
                return httpx.get(url, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(served, timeout=10, what="a connection once one was freed", every=0.05)
        idle.pop().close()
