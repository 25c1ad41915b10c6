"""Waiting on evidence: poll a check until it answers, instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    """``check()``'s first truthy answer, polled every ``every`` seconds; TimeoutError
    naming ``what`` after ``timeout`` seconds. ``check`` is asked once more at the
    deadline, so a slow check never times out without a last look."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} after {timeout}s")
        time.sleep(every)
