"""The daemon's HTTP server: artifacts for devices (content-addressed, Range, bearer token),
``/healthz`` and ``/readyz`` (``_health``), ``/metrics``, the fleet page and its API (``_web``).

Only ``<prefix>sha256/ab/<64 hex>`` is ever mapped to a file, so no request can reach
anything else on disk. A token is a device's when its sha256 is that device's
``token_sha256``, and it reads only that device's artifacts (``registry_token_check``); any
other artifact answers 404, exactly like a missing one, so a device cannot learn what
exists. Every connection is bounded in time (idle, head, send) and its head in bytes.
"""

from __future__ import annotations

import io
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from edgefleet.shared.errors import EdgefleetError

from ..registry import ArtifactStore
from ._access import Access, AccessCheck
from ._metrics import Metrics
from ._web import MAX_FORM_BYTES, FleetWeb, WebAnswer
from ._wire import DeadlineReader, HeadBudget, HeadTooLarge, NoRange, parse_range

log = logging.getLogger("edgefleet.controller.http")

_CHUNK = 1 << 16
# Production bounds, each an ArtifactServer parameter. A device fetching an artifact sends
# its request at once; only a stuck or hostile client comes near these.
IDLE_TIMEOUT_S = 30.0  # a connection (new or kept alive) that starts no request
HEAD_TIMEOUT_S = 10.0  # from a request's first byte to the end of its headers
SEND_TIMEOUT_S = 30.0  # for each 64 KiB of the body: a reader slower than ~2 KiB/s is cut
MAX_HEAD_BYTES = 16 * 1024  # request line and headers together
# routes counted by name in edgefleet_api_requests_total; any other path is "other"
_ROUTES = frozenset(
    {"/", "/login", "/logout", "/ui/app.js", "/ui/app.css", "/api/v1/status",
     "/api/v1/deployments", "/api/v1/latency", "/api/v1/events"}
)  # fmt: skip


class ArtifactServer:
    """A ThreadingHTTPServer on its own thread; ``stop()`` waits for it."""

    def __init__(
        self,
        store: ArtifactStore,
        check_access: AccessCheck,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/artifacts/",
        metrics: Metrics | None = None,
        metrics_text: Callable[[], str] | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
        max_head_bytes: int = MAX_HEAD_BYTES,
        tls: ssl.SSLContext | None = None,
        web: FleetWeb | None = None,
        health: Callable[[str], WebAnswer | None] | None = None,
    ) -> None:
        """``tls``: HTTPS with this server-side context (see ``server_tls_context``); ``web``:
        the fleet page and API, off without it; ``health``: ``Health.answer``, else plain ok."""
        prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        path_re = re.compile("^" + re.escape(prefix) + r"sha256/([0-9a-f]{2})/([0-9a-f]{64})$")
        handler = type(
            "Handler",
            (_Handler,),
            {
                "store": store,
                "check_access": staticmethod(check_access),
                "idle_timeout_s": idle_timeout_s,
                "head_timeout_s": head_timeout_s,
                "send_timeout_s": send_timeout_s,
                "max_head_bytes": max_head_bytes,
                "path_re": path_re,
                "metrics": metrics or Metrics(),
                "metrics_text": staticmethod(metrics_text) if metrics_text else None,
                "web": web,
                "health": staticmethod(health) if health else None,
            },
        )
        self.httpd = _Server((host, port), handler)
        self.httpd.tls = tls
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> ArtifactServer:
        # stop() waits for serve_forever's next poll (every 0.5 s by default)
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="artifact-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is not None:  # the handshake happens on the connection's own thread
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


class _Handler(BaseHTTPRequestHandler):
    store: ArtifactStore
    check_access: AccessCheck
    path_re: re.Pattern[str]
    metrics: Metrics
    metrics_text: Callable[[], str] | None
    web: FleetWeb | None
    health: Callable[[str], WebAnswer | None] | None
    idle_timeout_s: float
    head_timeout_s: float
    send_timeout_s: float
    max_head_bytes: int
    protocol_version = "HTTP/1.1"  # keep-alive: handle() loops until close_connection
    server_version = "edgefleet-controller"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def setup(self) -> None:
        self.handshake_failed = False
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.head_timeout_s)
            try:
                self.request.do_handshake()
            except OSError as exc:  # ssl.SSLError too: not TLS, a bad client, too slow
                log.debug("%s: TLS handshake failed: %s", self.client_address[0], exc)
                self.handshake_failed = True
        super().setup()
        self.rfile.close()  # the plain reader, replaced by one that keeps the head's deadline
        self.wire = DeadlineReader(self.connection)
        self.rfile = self.buffered = io.BufferedReader(self.wire)

    def handle(self) -> None:
        if not self.handshake_failed:
            super().handle()

    def handle_one_request(self) -> None:
        """``BaseHTTPRequestHandler``'s, with bounds: the stdlib waits forever for a kept-alive
        connection's next request and lets a head trickle in a byte at a time."""
        self.command, self.request_version, self.requestline = "", "HTTP/1.1", ""
        try:
            self.wire.deadline = None
            self.connection.settimeout(self.idle_timeout_s)
            if not self.buffered.peek(1):  # the client closed the connection
                self.close_connection = True
                return
            self.wire.deadline = time.monotonic() + self.head_timeout_s
            if not self._read_head():
                return
            self.wire.deadline = None
            self.connection.settimeout(self.send_timeout_s)
            method = getattr(self, f"do_{self.command}", None)
            if method is None:
                self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"unsupported method {self.command!r}")
                return
            if (
                self.headers.get("Content-Length", "0") != "0"
                or "Transfer-Encoding" in self.headers
            ):
                self.close_connection = True  # a body left unread must not pass for a request
            method()
            self.wfile.flush()
        except TimeoutError:
            midway = self.wire.deadline is not None
            log.debug("%s: timed out, closing the connection", self.address_string())
            if midway:  # the client started a request: say why it gets no answer, then close
                self._give_up(HTTPStatus.REQUEST_TIMEOUT)
            self.close_connection = True
        except OSError as exc:  # reset or broken pipe: the client went away
            log.debug("%s: connection lost: %s", self.address_string(), exc)
            self.close_connection = True

    def _read_head(self) -> bool:
        """Read and parse the request line and headers within ``max_head_bytes``; False when
        there is no request to serve (the answer, if one is due, was sent)."""
        buffered = self.rfile
        self.rfile = HeadBudget(buffered, self.max_head_bytes)  # type: ignore[assignment]
        try:
            try:
                self.raw_requestline = self.rfile.readline(65537)
            except HeadTooLarge:
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return False
            if not self.raw_requestline:
                self.close_connection = True
                return False
            # over the budget in the headers: parse_request answers 431 and closes
            return self.parse_request()
        finally:
            self.rfile = buffered

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        if self.close_connection:  # say so, or a client may send its next request on it
            self.send_header("Connection", "close")

    def _give_up(self, status: HTTPStatus) -> None:
        self.wire.deadline = None
        try:
            self.connection.settimeout(self.send_timeout_s)
            self.send_error(status)
        except OSError:
            pass  # the client is gone as well: nobody to tell

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        length = self.headers.get("Content-Length", "")
        if self.web is None or not self.web.wants(path):
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", body=True)
            return
        if not length.isdigit() or int(length) > MAX_FORM_BYTES:
            self.close_connection = True
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"form too large\n", body=True)
            return
        form = self.rfile.read(int(length))
        if len(form) == int(length) and "Transfer-Encoding" not in self.headers:
            self.close_connection = False  # the body was read whole: the next request may come
        self._answer_web("POST", path, query, form, body=True)

    def _answer_web(self, method: str, path: str, query: str, form: bytes, *, body: bool) -> None:
        assert self.web is not None
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer: WebAnswer = self.web.answer(
            method, path, query, headers, self.client_address[0], form
        )
        route = (
            path
            if path in _ROUTES
            else "/api/v1/deployments/*"
            if path.startswith("/api/v1/deployments/")
            else "other"
        )
        self.metrics.inc(
            "edgefleet_api_requests_total", route=route, status=str(int(answer.status))
        )
        self._send(answer, body=body)

    def _send(self, answer: WebAnswer, *, body: bool) -> None:
        self.send_response(answer.status)
        for k, v in answer.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if body and answer.body:
            self.wfile.write(answer.body)

    def _serve(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if self.health is not None and (health := self.health(path)) is not None:
            self._send(health, body=body)  # not an artifact request: not counted as one
            return
        if path == "/healthz":
            self._reply(HTTPStatus.OK, b"ok\n", body=body)
            return
        if path == "/metrics" and self.metrics_text is not None:
            self._reply(
                HTTPStatus.OK,
                self.metrics_text().encode(),
                body=body,
                content_type="text/plain; version=0.0.4; charset=utf-8",
            )
            return
        if self.web is not None and self.web.wants(path):
            method = "GET" if body else "HEAD"
            self._answer_web(method, path, self.path.partition("?")[2], b"", body=body)
            return
        match = self.path_re.fullmatch(path)
        if match is None or match.group(2)[:2] != match.group(1):
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", body=body)
            return
        sha = match.group(2)
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        try:
            if scheme.lower() != "bearer" or not token:
                access = Access.UNKNOWN_TOKEN
            else:
                access = self.check_access(token, sha)
        except EdgefleetError as exc:
            log.error("cannot check a token for %s: %s", sha[:12], exc)
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"try again later\n", body=body)
            return
        if access is Access.UNKNOWN_TOKEN:
            self._reply(
                HTTPStatus.UNAUTHORIZED,
                b"a device token is required\n",
                body=body,
                headers={"WWW-Authenticate": 'Bearer realm="edgefleet"'},
            )
            return
        file = self.store.path_of(sha)
        # not this device's artifact: the very answer a missing file gets, so none can tell
        fh = _open(file) if access is Access.GRANTED else None
        if fh is None:
            self._reply(HTTPStatus.NOT_FOUND, b"no such artifact\n", body=body)
            return
        with fh:
            size = file.stat().st_size
            start, end = 0, size - 1
            status = HTTPStatus.OK
            headers = {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "ETag": f'"{sha}"',
                # private: a shared cache must not hand one device's artifact to another
                "Cache-Control": "private, max-age=31536000, immutable",
            }
            wanted = self.headers.get("Range")
            parsed = parse_range(wanted, size) if wanted else NoRange.IGNORED
            if parsed is not NoRange.IGNORED:
                if parsed is NoRange.UNSATISFIABLE:
                    headers["Content-Range"] = f"bytes */{size}"
                    self._reply(
                        HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", body=body, headers=headers
                    )
                    return
                start, end = parsed
                status = HTTPStatus.PARTIAL_CONTENT
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            length = end - start + 1
            self.metrics.inc("edgefleet_artifact_requests_total", status=str(int(status)))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if not body:
                return
            fh.seek(start)
            left = length
            try:
                while left > 0:
                    chunk = fh.read(min(_CHUNK, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                log.debug("client went away during %s", sha[:12])

    def _reply(
        self,
        status: HTTPStatus,
        payload: bytes,
        *,
        body: bool,
        headers: dict[str, str] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        if self.path_re.fullmatch(self.path.split("?", 1)[0]) or status >= 400:
            self.metrics.inc("edgefleet_artifact_requests_total", status=str(int(status)))
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body and payload:
            self.wfile.write(payload)


def _open(file: Path) -> BinaryIO | None:
    try:
        return open(file, "rb")  # the caller closes it
    except OSError:
        return None
