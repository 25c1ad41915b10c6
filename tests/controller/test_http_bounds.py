"""The artifact server against hostile clients: silent, stalled, trickling and kept-alive
connections are closed after a bounded time, heads over the size cap and Range headers with
thousands of digits get an answer, never a traceback. The daemon's real server on a free
loopback port with small timeouts; raw sockets where httpx would be too polite."""

from __future__ import annotations

import logging
import os
import select
import socket
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlmodel import select as sql_select

from edgefleet.controller import Home
from edgefleet.controller.daemon import ArtifactServer, registry_token_check
from edgefleet.controller.fleet import add_device
from edgefleet.controller.registry import ArtifactGrant, Device, DeviceCreate, StoredArtifact
from edgefleet.harness import wait_until

IDLE_S, HEAD_S, SEND_S = 0.3, 0.6, 0.5
MAX_HEAD = 12_000  # room for the Range cases' 5000 digits
SIZE = 10_000
# every wait on the server below is bounded by this; the timeouts above are far shorter
PATIENCE_S = 10.0


@pytest.fixture
def token(home: Home) -> str:
    enrolled = add_device(home, DeviceCreate(name="pi-1", profile="rpi4"))
    return str(tomllib.loads(enrolled.agent_config)["artifact_token"])


def _granted(home: Home, data: bytes) -> StoredArtifact:
    """A file in the store that pi-1 may read for the next hour."""
    stored = home.store.put_bytes(data)
    with home.session(write=True) as s:
        device = s.exec(sql_select(Device).where(Device.name == "pi-1")).one()
        expires = datetime.now(UTC) + timedelta(hours=1)
        s.add(ArtifactGrant(device_id=device.id, artifact_sha256=stored.sha256, expires_at=expires))
    return stored


@pytest.fixture
def artifact(home: Home, token: str) -> tuple[StoredArtifact, bytes]:
    data = os.urandom(SIZE)
    return _granted(home, data), data


@pytest.fixture
def server(home: Home, token: str) -> Iterator[ArtifactServer]:
    srv = ArtifactServer(
        home.store, registry_token_check(home.engine),
        idle_timeout_s=IDLE_S, head_timeout_s=HEAD_S, send_timeout_s=SEND_S,
        max_head_bytes=MAX_HEAD,
    ).start()  # fmt: skip
    yield srv
    srv.stop()


def _connect(server: ArtifactServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S)
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (recv returns b"")."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_connection_that_sends_nothing_is_closed(server: ArtifactServer) -> None:
    with _connect(server) as sock:
        started = time.monotonic()
        assert _until_closed(sock) == b""  # no request, no answer: just closed
        assert time.monotonic() - started < PATIENCE_S


def test_a_request_that_stalls_midway_gets_408_and_is_closed(server: ArtifactServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_head_trickled_a_byte_at_a_time_is_cut_at_the_deadline(server: ArtifactServer) -> None:
    """Each byte comes well inside any per-read timeout; the head's deadline still ends it."""
    with _connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        sent = 0
        while not select.select([sock], [], [], 0.05)[0]:  # nothing from the server yet
            sock.sendall(b"a")
            sent += 1
            assert time.monotonic() - started < PATIENCE_S, "the server let the head trickle on"
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert sent >= 3  # it did trickle before being cut


def test_a_kept_alive_connection_left_idle_is_closed(
    server: ArtifactServer, artifact: tuple[StoredArtifact, bytes], token: str
) -> None:
    stored, data = artifact
    request = (
        f"GET /artifacts/{stored.path} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    with _connect(server) as sock:
        sock.sendall(request)
        answer = _until_closed(sock)  # the whole answer, then the close once idle
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == data


def test_a_client_that_stops_reading_is_cut_off(
    home: Home, server: ArtifactServer, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edgefleet.controller.http")
    size = 48 << 20  # more than the kernel buffers on both ends can hold
    stored = _granted(home, os.urandom(size))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(PATIENCE_S)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(
            f"GET /artifacts/{stored.path} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        wait_until(
            lambda: any("timed out" in r.getMessage() for r in caplog.records),
            PATIENCE_S,
            "the server giving up on a reader that stopped",
            every=0.05,
        )
        received = len(_until_closed(sock))
    assert 0 < received < size  # part of the file, then the connection was closed


RANGE_CASES = [
    # (Range header, status, the bytes expected: a slice of the file)
    ("bytes=10-19", 206, slice(10, 20)),
    ("bytes=100-", 206, slice(100, None)),
    ("bytes=-5", 206, slice(-5, None)),
    ("bytes=0-" + "9" * 5000, 206, slice(None)),  # a last position past the end: to the end
    ("bytes=-" + "9" * 5000, 206, slice(None)),  # a suffix longer than the file: all of it
    ("bytes=" + "0" * 4000 + "7-8", 206, slice(7, 9)),  # leading zeros are still numbers
    ("bytes=" + "9" * 5000 + "-", 416, slice(0)),  # a first position past the end
    ("bytes=" + "9" * 5000 + "-" + "9" * 5000, 416, slice(0)),
    (f"bytes={SIZE}-", 416, slice(0)),
    ("bytes=20-10", 416, slice(0)),  # reversed
    ("bytes=0-1,5-6", 416, slice(0)),  # several ranges: not offered
    ("bytes=abc", 416, slice(0)),  # malformed bytes range
    ("bytes=--5", 416, slice(0)),
    ("bytes=-0", 416, slice(0)),
    ("items=0-5", 200, slice(None)),  # another unit: ignored, per RFC 9110
]


@pytest.mark.parametrize(("header", "status", "part"), RANGE_CASES, ids=lambda v: str(v)[:24])
def test_range_headers_always_get_an_answer(
    server: ArtifactServer,
    artifact: tuple[StoredArtifact, bytes],
    token: str,
    header: str,
    status: int,
    part: slice,
) -> None:
    stored, data = artifact
    url = f"http://127.0.0.1:{server.port}/artifacts/{stored.path}"
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=PATIENCE_S) as client:
        r = client.get(url, headers={**auth, "Range": header})
        assert r.status_code == status
        assert r.content == data[part]
        if status == 416:
            assert r.headers["Content-Range"] == f"bytes */{SIZE}"
        again = client.get(url, headers=auth)  # the same kept-alive connection still serves
        assert again.status_code == 200 and again.content == data


def test_a_head_over_the_cap_gets_431(
    server: ArtifactServer, artifact: tuple[StoredArtifact, bytes], token: str
) -> None:
    stored, _ = artifact
    url = f"http://127.0.0.1:{server.port}/artifacts/{stored.path}"
    # a dozen 1 KB lines: each under the stdlib's 64 KiB and their count under its 100
    many = {f"X-Filler-{i}": "f" * 1000 for i in range(MAX_HEAD // 1000 + 1)}
    r = httpx.get(url, headers={"Authorization": f"Bearer {token}", **many})
    assert r.status_code == 431
    assert httpx.get(url, headers={"Range": "bytes=" + "9" * MAX_HEAD}).status_code == 431


def test_a_request_line_over_the_cap_gets_414(server: ArtifactServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /" + b"a" * (MAX_HEAD + 10) + b" HTTP/1.1\r\n\r\n")
        assert _until_closed(sock).startswith(b"HTTP/1.1 414 ")
