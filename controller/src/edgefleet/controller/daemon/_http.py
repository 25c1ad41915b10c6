"""The daemon's HTTP server: artifacts for devices (content-addressed, Range, bearer token),
``/healthz`` and ``/readyz`` (``_health``), ``/metrics``, the fleet page and its API (``_web``).

Only ``<prefix>sha256/ab/<64 hex>`` is ever mapped to a file, so no request can reach
anything else on disk. A token is a device's when its sha256 is that device's
``token_sha256``, and it reads only that device's artifacts (``registry_token_check``); any
other artifact answers 404, exactly like a missing one, so a device cannot learn what
exists. Every connection is bounded in time (idle, head, send) and its head in bytes, and
their number is capped. A connection holds a thread only while a worker computes its reply
(``_hub``): idle keep-alive connections, slow heads and slow readers hold none.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, BinaryIO

from edgefleet.shared.errors import EdgefleetError

from ..registry import ArtifactStore
from ._access import Access, AccessCheck
from ._conns import ConnectionLimits, Reply, Request, connection_cap
from ._hub import ConnectionHub
from ._metrics import Metrics
from ._web import MAX_FORM_BYTES, FleetWeb, WebAnswer
from ._wire import RESPONSE_CHUNK, DeadlineReader, HeadBudget, HeadTooLarge, NoRange, parse_range

log = logging.getLogger("edgefleet.controller.http")

# Production bounds, each an ArtifactServer parameter. A device fetching an artifact sends
# its request at once; only a stuck or hostile client comes near these.
IDLE_TIMEOUT_S = 30.0  # a connection (new or kept alive) that starts no request
HEAD_TIMEOUT_S = 10.0  # from a request's first byte to the end of its headers
SEND_TIMEOUT_S = 30.0  # for each 64 KiB of the body: a reader slower than ~2 KiB/s is cut
MAX_HEAD_BYTES = 16 * 1024  # request line and headers together
# Workers compute replies and never wait on a client (the hub sends), so they wait only on
# the registry (a token, the fleet page's queries, /metrics): a few per core are plenty.
WORKERS = 16
# /healthz and /readyz answer from memory on a pool of their own, so a probe is never queued
# behind registry work, however slow the registry.
PROBE_WORKERS = 2
PROBES = (b"/healthz", b"/readyz")
# routes counted by name in edgefleet_api_requests_total; any other path is "other"
_ROUTES = frozenset(
    {"/", "/login", "/logout", "/ui/app.js", "/ui/app.css", "/api/v1/status",
     "/api/v1/deployments", "/api/v1/latency", "/api/v1/events"}
)  # fmt: skip


class ArtifactServer:
    """The HTTP server: a ``ConnectionHub`` on its own thread; ``stop()`` waits for it."""

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
        max_connections: int | None = None,
        workers: int = WORKERS,
    ) -> None:
        """``tls``: HTTPS with this server-side context (see ``server_tls_context``); ``web``:
        the fleet page and API, off without it; ``health``: ``Health.answer``, else plain ok;
        ``max_connections``: open at once, more are refused (503); by default what the
        open-files limit affords (``connection_cap``, which raises the soft limit)."""
        prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        path_re = re.compile("^" + re.escape(prefix) + r"sha256/([0-9a-f]{2})/([0-9a-f]{64})$")
        handler = type(
            "Handler",
            (_Handler,),
            {
                "store": store,
                "check_access": staticmethod(check_access),
                "head_timeout_s": head_timeout_s,
                "max_head_bytes": max_head_bytes,
                "path_re": path_re,
                "metrics": metrics or Metrics(),
                "metrics_text": staticmethod(metrics_text) if metrics_text else None,
                "web": web,
                "health": staticmethod(health) if health else None,
            },
        )
        limits = ConnectionLimits(
            max_connections=connection_cap() if max_connections is None else max_connections,
            idle_timeout_s=idle_timeout_s,
            head_timeout_s=head_timeout_s,
            send_timeout_s=send_timeout_s,
            max_head_bytes=max_head_bytes,
            workers=workers,
            probe_workers=PROBE_WORKERS,
        )
        # `httpd`: the name the daemon's loop knows (server_close() when it never started)
        self.httpd = ConnectionHub(
            (host, port), lambda request: handler(request).respond(), limits, tls=tls, probes=PROBES
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> ArtifactServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="artifact-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    store: ArtifactStore
    check_access: AccessCheck
    path_re: re.Pattern[str]
    metrics: Metrics
    metrics_text: Callable[[], str] | None
    web: FleetWeb | None
    health: Callable[[str], WebAnswer | None] | None
    head_timeout_s: float
    max_head_bytes: int
    protocol_version = "HTTP/1.1"  # keep-alive: the hub waits for the next request
    server_version = "edgefleet-controller"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def __init__(self, request: Request) -> None:
        # not BaseRequestHandler's, which would serve the whole connection: one request here
        self.request = self.connection = request.sock
        self.client_address = (request.peer, 0)
        self.wire = DeadlineReader(request.sock, request.ahead)
        self.wire.deadline = request.deadline  # the head is whole: only a stray read waits
        self.rfile = self.buffered = io.BufferedReader(self.wire)
        self.wfile = self.out = io.BytesIO()  # the hub sends it, as fast as the client takes it
        self.close_connection = True
        self.file: tuple[BinaryIO, int, int] | None = None  # a body to send: file, offset, length

    def respond(self) -> Reply:
        try:
            self.handle_one_request()
        except BaseException:
            if self.file is not None:
                self.file[0].close()
            raise
        file, offset, length = self.file or (None, 0, 0)
        ahead = self.wire.leftover(self.buffered) if not self.close_connection else b""
        return Reply(self.out.getvalue(), not self.close_connection, ahead, file, offset, length)

    def handle_one_request(self) -> None:
        """``BaseHTTPRequestHandler``'s, for a head the hub gathered whole within its bounds."""
        self.command, self.request_version, self.requestline = "", "HTTP/1.1", ""
        try:
            if not self._read_head():
                return
            self.wire.deadline = None
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
        except TimeoutError:  # a form's body (or a head, by a stray read) came too slowly
            log.debug("%s: timed out, closing the connection", self.address_string())
            self._give_up(HTTPStatus.REQUEST_TIMEOUT)
            self.close_connection = True
        except OSError as exc:  # reset: the client went away
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
        self.send_error(status)

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
        self.wire.deadline = time.monotonic() + self.head_timeout_s  # no trickling form either
        form = self.rfile.read(int(length))
        self.wire.deadline = None
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
        try:
            # not this device's artifact: the very answer a missing file gets, so none can tell
            fh = open(file, "rb") if access is Access.GRANTED else None  # noqa: SIM115
        except OSError as exc:
            fh = None
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # the host's trouble, not a 404
                log.error("cannot open the artifact %s: %s", sha[:12], exc.strerror)
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"try again later\n", body=body)
                return
        if fh is None:
            self._reply(HTTPStatus.NOT_FOUND, b"no such artifact\n", body=body)
            return
        try:
            self._artifact(fh, sha, body=body)
        finally:
            if self.file is None:  # else the hub sends it, then closes it
                fh.close()

    def _artifact(self, fh: BinaryIO, sha: str, *, body: bool) -> None:
        size = os.fstat(fh.fileno()).st_size
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
        if length > RESPONSE_CHUNK:  # sent by the hub, from the file, as the client takes it
            self.file = (fh, start, length)
            return
        fh.seek(start)
        self.wfile.write(fh.read(length))

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
