"""Stream a model artifact over HTTP into a ``.part`` file, resuming with Range after a cut.

The declared size is enforced while streaming; hashing the result is the caller's job.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from edgefleet.shared.errors import ArtifactError, DownloadError, SizeExceeded

__all__ = ["download"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")


def download(
    client: httpx.Client,
    url: str,
    dest: Path,
    *,
    size: int,
    min_bytes_per_s: float = 1024.0,
    throughput_window_s: float = 10.0,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Bring ``dest`` to exactly ``size`` bytes from ``url``, or raise an ``ArtifactError``.

    ``DownloadError`` is worth a retry and keeps what was written so the next call resumes;
    ``SizeExceeded`` and other ``ArtifactError``\\ s are not. A connection that goes silent
    is the client's read timeout to catch; ``min_bytes_per_s`` catches one that trickles.
    """
    have = dest.stat().st_size if dest.exists() else 0
    if dest.exists() and have == size:
        return
    if have > size:
        dest.unlink()
        have = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    where = _redacted(url)
    # Range offsets count encoded bytes, so a compressed body would break resume.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with client.stream("GET", url, headers=headers) as response:
            offset = _start_offset(response, have, dest, where)
            expected = _content_length(response, where)
            if expected is not None and offset + expected > size:
                _discard(dest)
                raise SizeExceeded(
                    f"{where}: server announces {offset + expected} bytes, manifest says {size}"
                )
            pace = _Pace(min_bytes_per_s, throughput_window_s, clock)
            total = offset
            with dest.open("ab" if offset else "wb") as out:
                # No chunk_size: re-chunking would hold bytes back, and a cut would lose them.
                for chunk in response.iter_bytes():
                    if total + len(chunk) > size:
                        out.close()
                        _discard(dest)
                        raise SizeExceeded(f"{where}: more than the declared {size} bytes")
                    out.write(chunk)
                    total += len(chunk)
                    if progress is not None:
                        progress(total)
                    pace.check(len(chunk), f"{total} of {size} bytes kept")
                if total < size:
                    raise DownloadError(f"{where}: connection ended at {total} of {size} bytes")
                out.flush()
                os.fsync(out.fileno())
    except httpx.InvalidURL as exc:
        raise ArtifactError(f"invalid artifact URL {where}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise DownloadError(f"{where}: {type(exc).__name__}: {exc}") from exc


def _start_offset(response: httpx.Response, have: int, dest: Path, where: str) -> int:
    """Where this response's body starts in the file, after vetting its status."""
    status = response.status_code
    if status == 200:
        return 0
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or int(match.group(1)) != have:
            # The server is resuming from somewhere else; only a fresh start is safe.
            _discard(dest)
            raise DownloadError(f"{where}: 206 with unexpected Content-Range, starting over")
        return have
    if status == 416:
        # Our partial file no longer matches what the server holds.
        _discard(dest)
        raise DownloadError(f"{where}: range not satisfiable at {have} bytes, starting over")
    if status == 429 or status >= 500:
        raise DownloadError(f"{where}: HTTP {status}")
    if status in (401, 403):
        raise ArtifactError(f"{where}: access denied (HTTP {status})")
    if status == 404:
        raise ArtifactError(f"{where}: artifact not found (HTTP 404)")
    raise ArtifactError(f"{where}: unexpected HTTP {status}")


def _content_length(response: httpx.Response, where: str) -> int | None:
    raw = response.headers.get("Content-Length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise DownloadError(f"{where}: malformed Content-Length {raw[:40]!r}") from None


class _Pace:
    """Aborts a transfer whose rate over a tumbling window falls below a floor."""

    def __init__(self, min_bytes_per_s: float, window_s: float, clock: Callable[[], float]):
        self._min, self._window, self._clock = min_bytes_per_s, window_s, clock
        self._start, self._bytes = clock(), 0

    def check(self, received: int, context: str) -> None:
        self._bytes += received
        now = self._clock()
        elapsed = now - self._start
        if elapsed < self._window:
            return
        # Measured over the real elapsed span, so one long stall cannot hide behind a window.
        if self._bytes < self._min * elapsed:
            raise DownloadError(
                f"too slow: {self._bytes / elapsed:.0f} B/s over {elapsed:.1f} s "
                f"(minimum {self._min:.0f} B/s); {context}"
            )
        self._start, self._bytes = now, 0


def _discard(dest: Path) -> None:
    dest.unlink(missing_ok=True)


def _redacted(url: str) -> str:
    """The URL without credentials or query string (presigned URLs carry tokens there)."""
    try:
        return str(httpx.URL(url).copy_with(userinfo=b"", query=None, fragment=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<artifact URL>"
