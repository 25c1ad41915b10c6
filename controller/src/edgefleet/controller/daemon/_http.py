"""The daemon's HTTP server: artifacts for devices (content-addressed, Range, bearer token)
and ``/healthz``.

Only ``<prefix>sha256/ab/<64 hex>`` is ever mapped to a file, so no request
can reach anything else on disk. A token is valid when its sha256 is a
device's ``token_sha256``.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from ..fleet import token_sha256
from ..registry import ArtifactStore, Device
from ._metrics import Metrics

log = logging.getLogger("edgefleet.controller.http")

_CHUNK = 1 << 16
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

TokenCheck = Callable[[str], str | None]  # token -> device name, or None


def registry_token_check(engine: Engine) -> TokenCheck:
    def check(token: str) -> str | None:
        digest = token_sha256(token)
        with Session(engine) as session:
            device = session.exec(select(Device).where(Device.token_sha256 == digest)).first()
            # the lookup is by hash; compare again in constant time for good measure
            if device and hmac.compare_digest(device.token_sha256, digest):
                return device.name
        return None

    return check


class ArtifactServer:
    """A ThreadingHTTPServer on its own thread; ``stop()`` waits for it."""

    def __init__(
        self,
        store: ArtifactStore,
        check_token: TokenCheck,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/artifacts/",
        metrics: Metrics | None = None,
        metrics_text: Callable[[], str] | None = None,
    ) -> None:
        prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        path_re = re.compile("^" + re.escape(prefix) + r"sha256/([0-9a-f]{2})/([0-9a-f]{64})$")
        handler = type(
            "Handler",
            (_Handler,),
            {
                "store": store,
                "check_token": staticmethod(check_token),
                "path_re": path_re,
                "metrics": metrics or Metrics(),
                "metrics_text": staticmethod(metrics_text) if metrics_text else None,
            },
        )
        self.httpd = ThreadingHTTPServer((host, port), handler)
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


class _Handler(BaseHTTPRequestHandler):
    store: ArtifactStore
    check_token: TokenCheck
    path_re: re.Pattern[str]
    metrics: Metrics
    metrics_text: Callable[[], str] | None
    protocol_version = "HTTP/1.1"
    server_version = "edgefleet-controller"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
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
        match = self.path_re.fullmatch(path)
        if match is None or match.group(2)[:2] != match.group(1):
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", body=body)
            return
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or not self.check_token(token.strip()):
            self._reply(
                HTTPStatus.UNAUTHORIZED,
                b"a device token is required\n",
                body=body,
                headers={"WWW-Authenticate": 'Bearer realm="edgefleet"'},
            )
            return
        sha = match.group(2)
        file = self.store.path_of(sha)
        try:
            fh = open(file, "rb")  # noqa: SIM115 - closed below
        except OSError:
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
                "Cache-Control": "public, max-age=31536000, immutable",
            }
            wanted = self.headers.get("Range")
            if wanted:
                parsed = _parse_range(wanted, size)
                if parsed is None:
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


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range → (first, last) inclusive, or None if it cannot be served."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # the last N bytes
        n = int(last)
        if n == 0:
            return None
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        return None
    return start, end
