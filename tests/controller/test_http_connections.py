"""The artifact server's connections cost no thread while they wait (issue 16): a thousand
idle keep-alive connections, slow downloads and stalled TLS handshakes leave the thread count
at the pools' size; a cap turns away connections over it; pipelined requests and TLS
keep-alive are answered in order. The daemon's real server on a free loopback port, driven
over raw sockets so each test controls exactly what is on the wire."""

from __future__ import annotations

import logging
import os
import resource
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from edgefleet.controller.daemon import Access, ArtifactServer, server_tls_context
from edgefleet.controller.home import ensure_tls
from edgefleet.controller.registry import ArtifactStore, StoredArtifact
from edgefleet.harness import wait_until

TOKEN = "device-token"
PATIENCE_S = 10.0  # every wait on the server is bounded by this
# the server's own threads at most: its hub, 16 workers and 2 for probes
SERVER_THREADS = 1 + 16 + 2
BIG = 3 << 20  # past the 64 KiB a worker answers itself: the hub sends it from the file


def _check(token: str, sha: str) -> Access:
    """The access seam: this one token reads everything (the registry's check is tested with
    a real registry in test_artifact_access)."""
    return Access.GRANTED if token == TOKEN else Access.UNKNOWN_TOKEN


@pytest.fixture(autouse=True, scope="module")
def enough_descriptors() -> Iterator[None]:
    """Both ends of a few thousand connections live in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def big(store: ArtifactStore) -> tuple[StoredArtifact, bytes]:
    data = os.urandom(BIG)
    return store.put_bytes(data), data


@contextmanager
def serving(store: ArtifactStore, **options: Any) -> Iterator[ArtifactServer]:
    server = ArtifactServer(store, _check, **options).start()
    try:
        yield server
    finally:
        server.stop()


class Client:
    """One raw connection that reads whole answers, pipelined ones included."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    @classmethod
    def connect(cls, server: ArtifactServer, **options: Any) -> Client:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S)
        if "tls" in options:
            sock = options["tls"].wrap_socket(sock, server_hostname="127.0.0.1")
        return cls(sock)

    def send(self, *paths: str, headers: str = "") -> None:
        """One request per path, written at once: pipelined when there are several."""
        self.sock.sendall(b"".join(_request(p, headers) for p in paths))

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        end = self.buffer.index(b"\r\n\r\n")
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        fields = (line.partition(":") for line in lines[1:])
        headers = {k.strip().lower(): v.strip() for k, _, v in fields}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._more()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return int(lines[0].split()[1]), headers, body

    def closed_by_server(self) -> bool:
        """True once the server has closed the connection (after anything still unread)."""
        try:
            while chunk := self.sock.recv(1 << 16):
                self.buffer += chunk
        except ConnectionResetError:
            pass
        return True

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def _request(path: str, headers: str = "") -> bytes:
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}{headers}\r\n".encode()


def _path(stored: StoredArtifact) -> str:
    return f"/artifacts/{stored.path}"


def _server_threads(before: int) -> int:
    return threading.active_count() - before


def test_a_thousand_idle_kept_alive_connections_hold_no_threads(store: ArtifactStore) -> None:
    before = threading.active_count()
    with serving(store) as server, ExitStack() as stack:
        clients = [Client.connect(server) for _ in range(1000)]
        for client in clients:
            stack.callback(client.close)
            client.send("/healthz")
        assert all(c.answer()[0] == 200 for c in clients)
        # every connection is open and idle now, kept alive by the server
        assert len(server.httpd.open) == 1000
        assert _server_threads(before) <= SERVER_THREADS
        for client in clients:
            client.send("/healthz")
        assert [c.answer()[:1] for c in clients] == [(200,)] * 1000
        assert _server_threads(before) <= SERVER_THREADS


def test_idle_connections_are_closed_by_the_hub_with_no_thread_each(
    store: ArtifactStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edgefleet.controller.http")
    before = threading.active_count()
    # short, yet long enough for 200 round trips on a loaded machine
    with serving(store, idle_timeout_s=1.5) as server, ExitStack() as stack:
        clients = [Client.connect(server) for _ in range(200)]
        for client in clients:
            stack.callback(client.close)
            client.send("/healthz")
            assert client.answer()[0] == 200
        assert _server_threads(before) <= SERVER_THREADS
        assert all(c.closed_by_server() for c in clients)  # each recv ends in EOF
        assert _server_threads(before) <= SERVER_THREADS
        wait_until(lambda: not server.httpd.open, PATIENCE_S, "the server forgetting them")
    assert sum("idle timed out" in r.getMessage() for r in caplog.records) == 200


def test_connections_over_the_cap_are_refused_at_once_until_some_close(
    store: ArtifactStore, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(store, max_connections=50) as server, ExitStack() as stack:
        held = [Client.connect(server) for _ in range(50)]
        for client in held:
            stack.callback(client.close)
            client.send("/healthz")
            assert client.answer()[0] == 200
        extra = [Client.connect(server) for _ in range(10)]
        for client in extra:
            stack.callback(client.close)
            assert client.closed_by_server()
            assert bytes(client.buffer).startswith(b"HTTP/1.1 503 ")
            assert b"Connection: close" in client.buffer
        assert server.httpd.refused == 10
        for client in held[:5]:
            client.close()
        wait_until(lambda: len(server.httpd.open) <= 45, PATIENCE_S, "closed ones forgotten")
        fresh = Client.connect(server)
        stack.callback(fresh.close)
        fresh.send("/healthz")
        assert fresh.answer()[0] == 200
        for client in held[5:]:  # the ones kept are served as before
            client.send("/healthz")
            assert client.answer()[0] == 200
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "edgefleet.controller.http"
    ]
    assert len(warnings) == 1 and "refused 1 connection(s)" in warnings[0]  # once a minute


def test_pipelined_requests_are_answered_in_order(
    store: ArtifactStore, big: tuple[StoredArtifact, bytes]
) -> None:
    stored, data = big
    with serving(store) as server:
        client = Client.connect(server)
        try:
            # a file the hub sends, then two small answers, all asked for in one write
            client.send(_path(stored), "/healthz", "/nothing-here")
            status, _, body = client.answer()
            assert (status, body == data) == (200, True)
            status, _, body = client.answer()
            assert (status, body) == (200, b"ok\n")
            assert client.answer()[0] == 404
            # a request whose head comes in two writes, the first one behind another request
            client.sock.sendall(_request("/healthz") + b"GET /healthz HTTP/1.1\r\nHo")
            assert client.answer()[0] == 200
            client.sock.sendall(b"st: x\r\n\r\n")
            assert client.answer()[0] == 200
        finally:
            client.close()


def test_slow_downloads_hold_no_worker_and_starve_nothing(
    store: ArtifactStore, big: tuple[StoredArtifact, bytes]
) -> None:
    """Twice as many downloads as workers, none read: health, another download and the
    threads are as if they were not there."""
    stored, data = big
    before = threading.active_count()
    with serving(store) as server, ExitStack() as stack:
        stalled = []
        for _ in range(32):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(PATIENCE_S)
            sock.connect(("127.0.0.1", server.port))
            stack.callback(sock.close)
            sock.sendall(_request(_path(stored)))
            stalled.append(sock)
        wait_until(
            lambda: sum(1 for c in server.httpd.open if c.file_left) == 32,
            PATIENCE_S,
            "all 32 downloads under way",
        )
        assert _server_threads(before) <= SERVER_THREADS
        probe = Client.connect(server)
        stack.callback(probe.close)
        probe.send("/healthz")
        assert probe.answer()[0] == 200
        reader = Client.connect(server)
        stack.callback(reader.close)
        reader.send(_path(stored), headers="Range: bytes=100-199\r\n")
        assert reader.answer()[::2] == (206, data[100:200])
        reader.send(_path(stored))
        assert reader.answer()[::2] == (200, data)
        assert _server_threads(before) <= SERVER_THREADS


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The server's context and a client's that trusts the CA `edgefleet tls init` makes."""
    files = ensure_tls(tmp_path / "home", ["127.0.0.1"])
    client = ssl.create_default_context(cadata=files.ca_cert.read_text())
    return server_tls_context(files.server_cert, files.server_key), client


def test_tls_keeps_a_connection_alive_across_requests(
    store: ArtifactStore,
    big: tuple[StoredArtifact, bytes],
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    stored, data = big
    server_side, client_side = tls
    with serving(store, tls=server_side) as server:
        client = Client.connect(server, tls=client_side)
        try:
            for _ in range(2):
                client.send(_path(stored))
                status, _, body = client.answer()
                assert (status, body == data) == (200, True)
            client.send("/healthz", _path(stored), "/healthz")  # pipelined, in one TLS record
            assert [client.answer()[0] for _ in range(3)] == [200, 200, 200]
            client.send(_path(stored), headers="Range: bytes=-10\r\n")
            assert client.answer()[::2] == (206, data[-10:])
            assert len(server.httpd.open) == 1  # all of it on the one connection
        finally:
            client.close()


def test_stalled_tls_handshakes_do_not_hold_up_others(
    store: ArtifactStore, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """Connections that start a handshake and go quiet wait in the hub, not on a thread."""
    server_side, client_side = tls
    before = threading.active_count()
    with serving(store, tls=server_side, head_timeout_s=60.0) as server, ExitStack() as stack:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S)
            stack.callback(sock.close)
            sock.sendall(b"\x16\x03\x01\x02\x00")  # a record header: a ClientHello to come
        wait_until(lambda: len(server.httpd.open) == 40, PATIENCE_S, "40 handshakes waiting")
        client = Client.connect(server, tls=client_side)
        stack.callback(client.close)
        client.send("/healthz")
        assert client.answer()[0] == 200
        assert _server_threads(before) <= SERVER_THREADS
