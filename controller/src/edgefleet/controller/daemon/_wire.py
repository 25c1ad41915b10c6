"""The artifact server's defences on the wire: reading a request's head against a deadline
and a byte budget, and parsing a ``Range`` header without trusting its numbers."""

from __future__ import annotations

import http.client
import io
import re
import socket
import ssl
import time
from enum import Enum
from pathlib import Path
from typing import Any

from edgefleet.shared.errors import ConfigError

# Far above any file in the store (2**63 has 19 digits); longer numbers are compared by
# their length, never handed to int(), which refuses strings over 4300 digits.
MAX_RANGE_DIGITS = 18
_BYTES_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)
_RANGE_UNIT = re.compile(r"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)=")


class DeadlineReader(io.RawIOBase):
    """The socket as a raw stream whose reads share one deadline when one is set: a client
    trickling a byte at a time cannot keep a request open longer than that. Without a
    deadline a read waits for the socket's own timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request's head did not arrive in time")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


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


def server_tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the certificate ``edgefleet tls init`` made."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert_file}: {exc}") from exc
    return context
