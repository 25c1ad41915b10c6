"""Local inference over HTTP on loopback for applications on the device (JSON and .npy).

The model comes from a :class:`ModelSlot`; tensors are decoded and encoded in ``_tensors``;
who may ask and how much at once is ``_admission``'s. Hostile input gets a 4xx or a 503,
never a 500: a 500 means the model failed on input that fit its signature.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np

from edgefleet.shared.errors import InputTooLarge, InvalidInput

from ._admission import (
    RETRY_AFTER_S,
    CappedHTTPServer,
    InferenceLimits,
    host_allowed,
    host_names,
)
from ._runtime import LoadedModel, short_error
from ._slot import ModelSlot
from ._telemetry import RequestStats
from ._tensors import (
    JSON_TYPE,
    NPY_TYPE,
    NPY_TYPES,
    NPZ_TYPE,
    Call,
    body_limit,
    check_feeds,
    encode_outputs,
    json_bytes,
    parse_call,
)

log = logging.getLogger(__name__)

_ROUTES = {"/healthz": "GET", "/v1/model": "GET", "/v1/infer": "POST"}
# Printable ASCII except '%'; anything else in a model name is percent-encoded so a
# header can neither fail to encode nor be split.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _check_media(content_type: str) -> None:
    if content_type not in (JSON_TYPE, NPZ_TYPE) and content_type not in NPY_TYPES:
        raise _Reply(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            f"Content-Type must be {JSON_TYPE}, {NPY_TYPE} or {NPZ_TYPE}, "
            f"not {content_type or 'missing'!r}",
        )


# -- HTTP ----------------------------------------------------------------------------


class _Reply(Exception):
    """A response decided before inference; raised to leave the request early."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class _Server(CappedHTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        slot: ModelSlot,
        stats: RequestStats,
        limits: InferenceLimits,
    ) -> None:
        self.slot = slot
        self.stats = stats
        self.limits = limits
        self.hosts = host_names(address[0])
        self.inflight = threading.BoundedSemaphore(limits.max_inflight)
        super().__init__(address, _Handler, max_connections=limits.max_connections)


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
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
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
        hosts = self.headers.get_all("Host") or []
        if not host_allowed(hosts, self.server.hosts, self.server.server_port):
            self.close_connection = self._has_body()
            reply = _Reply(
                HTTPStatus.BAD_REQUEST,
                "bad_host",
                "this endpoint answers only to Host "
                + ", ".join(sorted(self.server.hosts))
                + f" (port {self.server.server_port})",
            )
            self._send_error(reply)
        elif allowed is None or method != allowed:
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
        model = self.server.slot.get()  # the one reference this request uses throughout
        if model is None:
            self.close_connection = self._has_body()
            self._send_error(_NO_MODEL)
            return
        limits = self.server.limits
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        started = time.perf_counter()
        try:  # everything known before the body is read: refused without reading it
            _check_media(content_type)
            limit = body_limit(
                model,
                as_json=content_type == JSON_TYPE,
                npy_input=query.get("input"),
                max_batch=limits.max_batch,
                as_npz=content_type == NPZ_TYPE,
            )
            length = self._content_length(min(limit, limits.max_body_bytes))
        except (InvalidInput, _Reply) as exc:
            self.close_connection = True  # the unread body cannot be skipped reliably
            self.server.stats.record(model, _ms_since(started), ok=False)
            self._send_error(_failure(exc), model)
            return
        if not self.server.inflight.acquire(timeout=limits.busy_wait_s):
            self.close_connection = True
            self._send_error(_BUSY, model, headers={"Retry-After": str(RETRY_AFTER_S)})
            return
        try:
            self._run_call(model, query, content_type, length)
        finally:
            self.server.inflight.release()

    def _run_call(
        self, model: LoadedModel, query: dict[str, str], content_type: str, length: int
    ) -> None:
        elapsed: float | None = None
        started = time.perf_counter()
        try:
            body = self._read_body(length)
            call = parse_call(model, body, content_type, query, self.server.limits.max_batch)
            del body  # the feeds are what the model needs; the bytes can go
            check_feeds(model, call.feeds, self.server.limits.max_batch)
            outputs = _run(model, call.feeds)
            elapsed = _ms_since(started)
            content, response_type, headers = _encode(model, outputs, call)
        except (InvalidInput, _Reply) as exc:
            failure = _failure(exc)
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

    def _content_length(self, limit: int) -> int:
        declared = self.headers.get_all("Content-Length") or []
        if not declared or self.headers.get("Transfer-Encoding"):
            raise _Reply(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "send the body with a Content-Length"
            )
        text = declared[0].strip()
        if len(declared) != 1 or not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise _Reply(HTTPStatus.BAD_REQUEST, "bad_request", "Content-Length is not a length")
        length = int(text)
        if length > limit:
            raise _Reply(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                f"a body of {length} bytes exceeds this model's limit of {limit}",
            )
        return length

    def _read_body(self, length: int) -> bytes:
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
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
        self._send(status, json_bytes(payload), JSON_TYPE, headers or {})

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
_BUSY = _Reply(HTTPStatus.SERVICE_UNAVAILABLE, "busy", "too many requests at once; retry shortly")


def _failure(exc: InvalidInput | _Reply) -> _Reply:
    if isinstance(exc, _Reply):
        return exc
    status = (
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        if isinstance(exc, InputTooLarge)
        else HTTPStatus.BAD_REQUEST
    )
    return _Reply(status, exc.code, str(exc))


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
    model: LoadedModel, outputs: Mapping[str, object], call: Call
) -> tuple[bytes, str, dict[str, str]]:
    content, content_type = encode_outputs(model, outputs, call)
    name = call.npy_output
    return content, content_type, {} if name is None else {"X-Edgefleet-Output": _header(name)}


def _model_headers(model: LoadedModel) -> dict[str, str]:
    return {
        "X-Edgefleet-Model": _header(str(model.ref)),
        "X-Edgefleet-Deployment": _header(model.deployment_id),
    }


def _header(value: str) -> str:
    return quote(value, safe=_HEADER_SAFE)


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
        limits: InferenceLimits | None = None,
    ) -> None:
        self._slot = slot
        self._stats = stats
        self._address = (host, port)
        self._limits = limits or InferenceLimits()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server(self._address, self._slot, self._stats, self._limits)
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
        server.close_connections()
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
