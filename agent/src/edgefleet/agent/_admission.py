"""Who may use the local inference endpoint, and how much of it at once.

The endpoint listens on loopback, but a web page in the device's browser can still reach
it through a name that resolves to 127.0.0.1 (DNS rebinding): the Host header must name
the endpoint itself. Every request and connection holds memory and a thread, so both are
capped; what does not fit is told to come back (503 with Retry-After) instead of queuing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import socketserver
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._tensors import MAX_BATCH

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
RETRY_AFTER_S = 1

_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]/@\s]+)(?::([0-9]{1,5}))?")


@dataclass(frozen=True)
class InferenceLimits:
    """What one endpoint takes on at once; each value bounds memory or threads."""

    max_body_bytes: int = 64 << 20  # the ceiling over every model's own body limit
    max_batch: int = MAX_BATCH  # values in an input's free dimensions, together
    max_inflight: int = 8  # requests reading, decoding or running at once; each holds a body
    busy_wait_s: float = 0.5  # a request waits this long for a free slot, then gets 503
    max_connections: int = 64  # open connections, a thread each; more get 503 at once


def host_names(configured: str) -> frozenset[str]:
    """The names a request may give in Host: loopback's, and the configured listen host."""
    name = configured.strip().lower()
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"  # an IPv6 address, written as a Host header writes it
    return LOOPBACK_NAMES | {name}


def host_allowed(values: list[str], names: frozenset[str], port: int) -> bool:
    """Exactly one Host header, naming one of ``names``, with this endpoint's port or none."""
    if len(values) != 1:
        return False
    match = _HOST.fullmatch(values[0].strip().lower())
    if match is None or match[1] not in names:
        return False
    return match[2] is None or int(match[2]) == port


def refuse_connection(connection: socket.socket) -> None:
    """Answer a connection over the cap with 503 and close it, without a thread."""
    body = json.dumps(
        {"error": "too many open connections; retry shortly", "code": "busy"}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER_S}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(OSError):  # the client may be gone already
        connection.settimeout(0.5)  # runs on the accepting thread: never wait long
        connection.sendall(head + body)


class CappedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them; the open ones are
    tracked so :meth:`close_connections` can end keep-alive connections at shutdown."""

    daemon_threads = True
    # Bursts of new connections from local apps wait in the backlog instead of being refused.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int,
    ) -> None:
        self.open_slots = threading.BoundedSemaphore(max_connections)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for
        # seconds on a device with no working DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Counted here, on the accepting thread, so a burst cannot start more threads than
        # the cap before the first of them runs.
        if not self.open_slots.acquire(blocking=False):
            refuse_connection(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.open_slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.open_slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that hang up mid-response are routine; anything else is a bug worth a trace.
        log.debug("error while serving %s", client_address, exc_info=True)

    def track(self, connection: socket.socket) -> None:
        with self.connections_lock:
            self.connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self.connections_lock:
            self.connections.discard(connection)

    def close_connections(self) -> None:
        """End open connections; keep-alive ones would go on serving after the listener closed."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
