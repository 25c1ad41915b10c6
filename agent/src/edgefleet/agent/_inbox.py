"""The worker's inbox: commands from the broker queue here, and a deployment waiting to retry
its download keeps reading them, so the device answers while an outage lasts.

A command that arrives during the wait is handled as it would be when the device is idle
(a ping, a refusal, a trust update, a benchmark, a copy of the waiting deployment), and the
wait goes on for what is left of it. A newer deploy or rollback order that the device
would accept is set aside instead: the wait ends, the waiting deployment fails as
superseded (saved and reported), and only then is the order taken from here and run.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ._link import Inbound


class Woken(StrEnum):
    """Why a wait between download attempts ended."""

    TIME = "time"  # the backoff ran out: try again
    STOPPING = "stopping"  # the agent stops; the next start resumes the deployment
    SUPERSEDED = "superseded"  # a newer order was set aside to run in its place


@dataclass(frozen=True)
class Wake:
    why: Woken
    command_kind: str = ""  # the order that superseded the waiting deployment, if one did
    command_id: str = ""


class Inbox:
    """Commands for the one worker, in order; ``stopping`` ends every wait early."""

    def __init__(self, stopping: threading.Event) -> None:
        self._queue: queue.Queue[Inbound | None] = queue.Queue()
        self._stopping = stopping
        self._waiting: str | None = None  # the deployment whose wait is reading commands
        self._held: tuple[Inbound, Wake] | None = None

    def put(self, message: Inbound | None) -> None:
        """Queue a command (the network thread's only work); None tells the worker to stop."""
        self._queue.put(message)

    def next(self) -> Inbound | None:
        """The order a wait set aside, else the next command (blocking); None: stop."""
        if self._held is not None:
            message, self._held = self._held[0], None
            return message
        return self._queue.get()

    def holds(self, message: Inbound) -> bool:
        """Whether ``message`` is set aside: it is acknowledged only once it has run."""
        return self._held is not None and self._held[0] is message

    def hold(self, message: Inbound, kind: str, command_id: str) -> str | None:
        """Set aside an order the device would accept, if a deployment waits to retry its
        download; returns the waiting deployment's id, or None when nothing waits (the
        caller then accepts the order itself)."""
        if self._waiting is None:
            return None
        self._held = (message, Wake(Woken.SUPERSEDED, kind, command_id))
        return self._waiting

    def wait(self, deployment_id: str, seconds: float, take: Callable[[Inbound], None]) -> Wake:
        """Wait up to ``seconds`` before ``deployment_id`` tries its download again, giving
        each command that arrives meanwhile to ``take`` (which may :meth:`hold` it)."""
        end = time.monotonic() + seconds
        self._waiting = deployment_id
        try:
            while not self._stopping.is_set():
                try:
                    # a zero timeout still looks once: an order already queued is not missed
                    message = self._queue.get(timeout=max(end - time.monotonic(), 0.0))
                except queue.Empty:
                    return Wake(Woken.TIME)
                if message is None:
                    self._queue.put(None)  # the worker's own loop must see the stop too
                    break
                take(message)
                if self._held is not None:
                    return self._held[1]
            return Wake(Woken.STOPPING)
        finally:
            self._waiting = None
