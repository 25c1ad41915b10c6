"""Local inference over HTTP on loopback for applications on the device (JSON and .npy).

The model comes from a :class:`ModelSlot`; tensors are decoded and encoded in ``_tensors``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np

from edgefleet.shared.errors import InvalidInput

from ._runtime import LoadedModel, short_error
from ._slot import ModelSlot
from ._telemetry import RequestStats
from ._tensors import (
    check_feeds,
    feeds_from_json,
    feeds_from_npy,
    npy_bytes,
    outputs_document,
    pick_output,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 << 20
JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
NPY_TYPES = frozenset({NPY_TYPE, "application/octet-stream"})
_ROUTES = {"/healthz": "GET", "/v1/model": "GET", "/v1/infer": "POST"}
# Printable ASCII except '%'; anything else in a model name is percent-encoded so a
# header can neither fail to encode nor be split.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


# -- request bodies to feeds --------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    feeds: dict[str, np.ndarray]
    npy_output: str | None  # None: answer in JSON with every output


def _parse_call(model: LoadedModel, body: bytes, content_type: str, query: dict[str, str]) -> _Call:
    if content_type == JSON_TYPE:
        return _Call(feeds_from_json(body, model), None)
    if content_type in NPY_TYPES:
        output = pick_output(model, query.get("output"))
        return _Call(feeds_from_npy(body, model, query.get("input")), output)
    raise _Reply(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        f"Content-Type must be {JSON_TYPE} or {NPY_TYPE}, not {content_type or 'missing'!r}",
    )


# -- HTTP ----------------------------------------------------------------------------


class _Reply(Exception):
    """A response decided before inference; raised to leave the request early."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Bursts of new connections from local apps wait in the backlog instead of being refused.
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], slot: ModelSlot, stats: RequestStats, max_body: int
    ) -> None:
        self.slot = slot
        self.stats = stats
        self.max_body = max_body
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for
        # seconds on a device with no working DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that hang up mid-response are routine; anything else is a bug worth a trace.
        log.debug("error while serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edgefleet-agent"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection gives its thread back after this
    # Headers and body go out in separate writes; with Nagle on, the body waits for
    # the client's delayed ACK and every keep-alive request costs ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would flood the device's log

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        allowed = _ROUTES.get(url.path)
        if allowed is None or method != allowed:
            # A request body left unread would be taken for the next request.
            self.close_connection = self._has_body()
            if allowed is None:
                reply = _Reply(HTTPStatus.NOT_FOUND, "not_found", f"no such path {url.path}")
                self._send_error(reply)
            else:
                reply = _Reply(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    f"{url.path} accepts {allowed} only",
                )
                self._send_error(reply, headers={"Allow": allowed})
        elif url.path == "/healthz":
            serving = self.server.slot.get() is not None
            self._send_json(HTTPStatus.OK, {"ok": True, "serving": serving})
        elif url.path == "/v1/model":
            model = self.server.slot.get()
            if model is None:
                self._send_error(_NO_MODEL)
            else:
                self._send_json(HTTPStatus.OK, model.describe())
        else:
            self._infer({k: v[-1] for k, v in parse_qs(url.query).items()})

    def _infer(self, query: dict[str, str]) -> None:
        started = time.perf_counter()
        try:
            body = self._read_body()
        except _Reply as reply:
            self.close_connection = True  # the unread body cannot be skipped reliably
            model = self.server.slot.get()
            if model is not None:
                self.server.stats.record(model, _ms_since(started), ok=False)
            self._send_error(reply, model)
            return
        model = self.server.slot.get()  # the one reference this request uses throughout
        if model is None:
            self._send_error(_NO_MODEL)
            return
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        elapsed: float | None = None
        started = time.perf_counter()
        try:
            call = _parse_call(model, body, content_type, query)
            check_feeds(model, call.feeds)
            outputs = _run(model, call.feeds)
            elapsed = _ms_since(started)
            content, response_type, headers = _encode(model, outputs, call)
        except InvalidInput as exc:
            failure = _Reply(HTTPStatus.BAD_REQUEST, exc.code, str(exc))
        except _Reply as reply:
            failure = reply
        except Exception as exc:  # a bug here must still answer, and count against the model
            log.exception("unexpected error while serving an inference request")
            failure = _Reply(HTTPStatus.INTERNAL_SERVER_ERROR, "internal", short_error(exc))
        else:
            self.server.stats.record(model, elapsed, ok=True)
            self._send(HTTPStatus.OK, content, response_type, {**_model_headers(model), **headers})
            return
        if elapsed is None:
            elapsed = _ms_since(started)
        self.server.stats.record(model, elapsed, ok=False)
        self._send_error(failure, model)

    def _has_body(self) -> bool:
        declared = self.headers.get("Content-Length", "0").strip()
        return bool(self.headers.get("Transfer-Encoding")) or declared not in ("", "0")

    def _read_body(self) -> bytes:
        declared = self.headers.get("Content-Length")
        if declared is None or self.headers.get("Transfer-Encoding"):
            raise _Reply(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "send the body with a Content-Length"
            )
        length = int(declared) if declared.strip().isdigit() else -1
        if length < 0:
            raise _Reply(HTTPStatus.BAD_REQUEST, "bad_request", "Content-Length is not a length")
        if length > self.server.max_body:
            raise _Reply(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                f"a body of {length} bytes exceeds the limit of {self.server.max_body}",
            )
        body = self.rfile.read(length)
        if len(body) != length:
            raise _Reply(HTTPStatus.BAD_REQUEST, "bad_request", "the body ended early")
        return body

    def _send_error(
        self,
        reply: _Reply,
        model: LoadedModel | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        extra = {**(_model_headers(model) if model else {}), **(headers or {})}
        self._send_json(reply.status, {"error": str(reply), "code": reply.code}, extra)

    def _send_json(
        self, status: HTTPStatus, payload: object, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, _json_bytes(payload), JSON_TYPE, headers or {})

    def _send(
        self, status: HTTPStatus, content: bytes, content_type: str, headers: dict[str, str]
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(content)


_NO_MODEL = _Reply(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", "no model is serving yet")


def _run(model: LoadedModel, feeds: dict[str, np.ndarray]) -> Mapping[str, object]:
    try:
        return model.run(feeds)
    except Exception as exc:  # ONNX Runtime raises its own untyped errors
        raise _Reply(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            "inference_failed",
            f"the model failed on this input: {short_error(exc)}",
        ) from exc


def _encode(
    model: LoadedModel, outputs: Mapping[str, object], call: _Call
) -> tuple[bytes, str, dict[str, str]]:
    if call.npy_output is None:
        return _json_bytes(outputs_document(model, outputs)), JSON_TYPE, {}
    name = call.npy_output
    return npy_bytes(name, outputs[name]), NPY_TYPE, {"X-Edgefleet-Output": _header(name)}


def _model_headers(model: LoadedModel) -> dict[str, str]:
    return {
        "X-Edgefleet-Model": _header(str(model.ref)),
        "X-Edgefleet-Deployment": _header(model.deployment_id),
    }


def _header(value: str) -> str:
    return quote(value, safe=_HEADER_SAFE)


def _json_bytes(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class InferenceServer:
    """The local inference endpoint; one thread per connection, keep-alive."""

    def __init__(
        self,
        slot: ModelSlot,
        stats: RequestStats,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._slot = slot
        self._stats = stats
        self._address = (host, port)
        self._max_body = max_body_bytes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server(self._address, self._slot, self._stats, self._max_body)
        # stop() waits for serve_forever's next poll (every 0.5 s by default); a select()
        # timeout of 0.1 s costs nothing measurable and makes stopping (a swap test, SIGTERM)
        # five times quicker
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="edgefleet-serving",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        # Keep-alive connections would otherwise go on serving after the listener closed.
        with server.connections_lock:
            connections = list(server.connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> InferenceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the inference server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._address[0]}:{self.port}"
