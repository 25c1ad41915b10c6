"""What the HTTP hub (``_hub``) and its workers share: a connection and its states, the
bounds, a request handed to a worker and the reply it hands back, and how many connections
the process's open-files limit affords."""

from __future__ import annotations

import logging
import os
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import BinaryIO

log = logging.getLogger("edgefleet.controller.http")

# Each connection costs one descriptor; this many are left for the rest of the daemon: the
# registry, the broker link, the workers' (each may open an artifact file) and the files
# being sent (one per artifact, however many connections send it: ``SharedFiles``).
FD_HEADROOM = 256
DEFAULT_MAX_CONNECTIONS = 16_384  # 10,000 devices, each keeping a connection, and room


def connection_cap(wanted: int = DEFAULT_MAX_CONNECTIONS) -> int:
    """How many connections this process can hold open: ``wanted``, or fewer when the
    open-files limit leaves no room; the soft limit is first raised toward the hard one (as
    Go's runtime does): the common soft default of 1,024 is too few for a large fleet."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open-files limit to %d: %s", raised, exc)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_HEADROOM))


def listen(address: tuple[str, int]) -> socket.socket:
    """A non-blocking listening socket; the OSError of a taken port, unchanged, otherwise."""
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)  # a fleet reconnecting at once waits here, not refused
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class ConnectionLimits:
    """The hub's bounds: open connections, threads, and time for each state a client is in."""

    max_connections: int
    idle_timeout_s: float  # a connection (new or kept alive) that starts no request
    head_timeout_s: float  # from a request's first byte (or a TLS handshake's) to its end
    send_timeout_s: float  # for each 64 KiB of an answer: a slower reader is cut
    max_head_bytes: int  # request line and headers: the hub holds no more of a head
    workers: int = 16  # answer artifacts, the fleet page and API, /metrics
    probe_workers: int = 2  # answer /healthz and /readyz only: never queued behind the rest


@dataclass(frozen=True)
class Request:
    """What a worker gets: the connection (non-blocking; the worker reads a request body
    with a timeout of its own) and its bytes read so far: a whole head, perhaps more."""

    sock: socket.socket
    peer: str
    ahead: bytes
    deadline: float  # time.monotonic() when the head's time is up


@dataclass(frozen=True)
class Reply:
    """A worker's answer, for the hub to send: ``out``, then ``length`` bytes of ``file`` from
    ``offset`` (the hub closes it); ``ahead``: bytes past the request, the next one's start."""

    out: bytes
    keep_alive: bool
    ahead: bytes = b""
    file: BinaryIO | None = None
    offset: int = 0
    length: int = 0


Serve = Callable[[Request], Reply]


class Phase(Enum):
    """Where a connection is; all but WORKING are watched by the hub, with a deadline."""

    HANDSHAKE = "handshake"  # TLS under way (head timeout)
    IDLE = "idle"  # no request started (idle timeout)
    HEAD = "head"  # a request's head arriving (head timeout)
    WORKING = "working"  # a worker holds it: the hub neither watches nor times it
    SENDING = "sending"  # the answer going out as fast as the client takes it (send timeout)
    CLOSED = "closed"


@dataclass(eq=False, slots=True)
class Connection:
    sock: socket.socket
    peer: str
    phase: Phase = Phase.IDLE
    events: int = 0  # what the selector watches it for; 0 when not registered
    ahead: bytearray = field(default_factory=bytearray)  # read, not yet given to a worker
    deadline: float = 0.0  # when its state's time is up
    out: memoryview = field(default_factory=lambda: memoryview(b""))  # left to send
    file: BinaryIO | None = None  # then send file_left bytes of it from file_offset
    file_offset: int = 0
    file_left: int = 0
    keep_alive: bool = False
    sent_unarmed: int = 0  # bytes sent since the send deadline was last set


class SharedFiles:
    """Open artifact files, one descriptor per file however many connections send it (each
    reads at its own offset: ``sendfile``, ``pread``), so descriptors go to connections."""

    def __init__(self) -> None:
        self.open: dict[tuple[int, int], tuple[BinaryIO, int]] = {}  # (dev, inode): file, users

    def share(self, file: BinaryIO) -> BinaryIO:
        """The open file to send ``file``'s bytes from; ``file`` is closed if one was open."""
        info = os.fstat(file.fileno())
        key = (info.st_dev, info.st_ino)
        shared, users = self.open.get(key, (file, 0))
        if shared is not file:
            file.close()
        self.open[key] = (shared, users + 1)
        return shared

    def release(self, file: BinaryIO) -> None:
        for key, (shared, users) in self.open.items():
            if shared is file:
                if users > 1:
                    self.open[key] = (shared, users - 1)
                else:
                    del self.open[key]
                    file.close()
                return
        file.close()  # never shared
