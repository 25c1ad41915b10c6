"""The artifact server's defences on the wire: reading a request's head against a deadline
and a byte budget, timing each connection's state, and parsing a ``Range`` header without
trusting its numbers."""

from __future__ import annotations

import http.client
import io
import re
import socket
import ssl
import time
from collections.abc import Hashable
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar

from edgefleet.shared.errors import ConfigError

# Far above any file in the store (2**63 has 19 digits); longer numbers are compared by
# their length, never handed to int(), which refuses strings over 4300 digits.
MAX_RANGE_DIGITS = 18
_BYTES_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)
_RANGE_UNIT = re.compile(r"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)=")
RESPONSE_CHUNK = 1 << 16  # an answer goes out this much at a time; the send timeout is per chunk
K = TypeVar("K", bound=Hashable)


class DeadlineReader(io.RawIOBase):
    """The socket as a raw stream whose reads share one deadline when one is set: a client
    trickling a byte at a time cannot keep a request open longer than that. ``ahead``, bytes
    of the connection already read, comes first, whatever the deadline. Without a deadline a
    read waits for the socket's own timeout."""

    def __init__(self, sock: socket.socket, ahead: bytes = b"") -> None:
        self.sock = sock
        self.deadline: float | None = None
        self.ahead = bytearray(ahead)
        self.nowait = False  # reads give only what is here already (``leftover``)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self.ahead:
            n = min(len(buffer), len(self.ahead))
            buffer[:n] = self.ahead[:n]
            del self.ahead[:n]
            return n
        if self.nowait:
            # TLS may hold decrypted bytes that no selector sees; a plain socket's wait there
            pending = self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0
            return self.sock.recv_into(buffer, min(len(buffer), pending)) if pending else None
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request's head did not arrive in time")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)

    def leftover(self, buffered: io.BufferedIOBase) -> bytes:
        """What ``buffered`` and this stream hold past what was read: the start of the next
        request, when the client sent it along (pipelining). Takes nothing from the socket."""
        self.nowait = True
        parts = []
        try:
            while chunk := buffered.read1(RESPONSE_CHUNK):
                parts.append(chunk)
        except OSError:
            pass  # the connection broke: its next read will say so
        finally:
            self.nowait = False
        return b"".join(parts)


class HeadTooLarge(http.client.HTTPException):
    """The request line and headers together are over the budget (the server answers 431,
    or 414 when the request line alone is)."""


class HeadBudget:
    """``readline`` over the buffered request stream, counting the head's bytes.

    ``BaseHTTPRequestHandler`` caps each header line at 64 KiB and their number at 100,
    which still lets one request hold 6 MiB of a thread's memory; this caps their sum."""

    def __init__(self, rfile: io.BufferedIOBase, limit: int) -> None:
        self.rfile = rfile
        self.limit = limit
        self.left = limit

    def readline(self, size: int = -1) -> bytes:
        want = self.left + 1 if size < 0 else min(size, self.left + 1)
        line = self.rfile.readline(want)
        self.left -= len(line)
        if self.left < 0:
            raise HeadTooLarge(f"the request's head is over {self.limit} bytes")
        return line


class NoRange(Enum):
    """Why a ``Range`` header gives no part of the file."""

    IGNORED = "ignored"  # a unit other than bytes: RFC 9110 says ignore it; the whole file
    UNSATISFIABLE = "unsatisfiable"  # 416 with ``Content-Range: bytes */size``


def parse_range(header: str, size: int) -> tuple[int, int] | NoRange:
    """One ``Range`` header against a file of ``size`` bytes, as RFC 9110 section 14.2 has it:

    - ``(first, last)``, inclusive: serve that part (206);
    - ``UNSATISFIABLE``: not satisfiable, or a ``bytes`` range this server does not take
      (malformed, several ranges, reversed); the RFC lets a server reject those (416);
    - ``IGNORED``: a unit other than bytes, which the RFC says to ignore: the whole file (200).

    A position past the end (however many digits) means the end; a first position past it
    is unsatisfiable; a suffix longer than the file is the whole file.
    """
    match = _BYTES_RANGE.fullmatch(header.strip())
    if match is None:
        unit = _RANGE_UNIT.match(header)
        if unit is not None and unit.group(1).lower() != "bytes":
            return NoRange.IGNORED
        return NoRange.UNSATISFIABLE
    first, last = (_number(g) if g else None for g in match.groups())
    if size == 0:
        return NoRange.UNSATISFIABLE
    if first is None:
        if last is None or last == 0:
            return NoRange.UNSATISFIABLE
        return max(0, size - last), size - 1  # the last N bytes
    if first >= size or (last is not None and last < first):
        return NoRange.UNSATISFIABLE
    return first, size - 1 if last is None else min(last, size - 1)


def _number(digits: str) -> int:
    """A decimal position; one over MAX_RANGE_DIGITS digits becomes 10**MAX_RANGE_DIGITS,
    which is past the end of every file and keeps each comparison with size right."""
    significant = digits.lstrip("0")
    if len(significant) > MAX_RANGE_DIGITS:
        return 10**MAX_RANGE_DIGITS
    return int(significant or "0")


def head_complete(received: bytes | bytearray, start: int = 0) -> bool:
    """Whether ``received`` holds a request's whole head: a line, then an empty line (CRLF
    or a bare LF, as the stdlib's parser takes it). ``start``: where to look from."""
    return received.find(b"\n\r\n", start) >= 0 or received.find(b"\n\n", start) >= 0


def plain_answer(status: int, reason: str, text: str, headers: tuple[str, ...] = ()) -> bytes:
    """A whole answer that closes the connection, for the hub to send without a handler."""
    body = text.encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}", *headers, "Connection: close", "", ""]  # fmt: skip
    return "\r\n".join(head).encode() + body


class Deadlines(Generic[K]):
    """Connections waiting under one timeout. All share its length, so the order they were
    armed in is the order they expire in: arming, disarming and finding the next are O(1)
    (a dict keeps insertion order), and nothing waits on a thread."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at: dict[K, float] = {}

    def arm(self, key: K, now: float) -> float:
        self.at.pop(key, None)  # to the end of the line
        self.at[key] = deadline = now + self.timeout_s
        return deadline

    def disarm(self, key: K) -> None:
        self.at.pop(key, None)

    def next_at(self) -> float | None:
        return next(iter(self.at.values()), None)

    def due(self, now: float) -> list[K]:
        due = []
        for key, deadline in self.at.items():
            if deadline > now:
                break
            due.append(key)
        return due


class Reminder:
    """Counts events and says when to log them: at the first, then at most once a period."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.count = 0
        self.next_at = float("-inf")

    def due(self, now: float) -> int | None:
        """Count one; the count since the last reminder when it is time for one, else None."""
        self.count += 1
        if now < self.next_at:
            return None
        count, self.count, self.next_at = self.count, 0, now + self.period_s
        return count


def server_tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the certificate ``edgefleet tls init`` made."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert_file}: {exc}") from exc
    return context
