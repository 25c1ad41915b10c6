"""When a failed download is tried again, and when the agent stops trying.

An outage of the artifact server or the network is waited out: attempts go on, with
exponential backoff and full jitter, until the manifest expires (or the configured
deadline after the deployment was accepted passes, or an optional attempt cap is
reached). Only transient failures get here; a permanent one (403, 404, more bytes than
declared) fails the deployment at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


class GiveUp(StrEnum):
    """Why a download was given up: the ``gave_up`` detail of the failure event."""

    EXPIRED = "expired"  # the manifest expires before the next attempt could start
    DEADLINE = "deadline"  # download_deadline_s after the deployment was accepted
    ATTEMPTS = "attempts"  # the optional download_attempts cap
    PERMANENT = "permanent"  # a failure no retry can fix


def full_jitter(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """A delay drawn evenly from zero to ``min(high, low * 2**attempt)``.

    Full jitter, not the reconnect's equal jitter: devices that lost the artifact server
    together compete for it when it returns, and spreading their attempts over the whole
    window is what keeps that contention lowest.
    """
    return rng.uniform(0.0, min(high, low * (2 ** min(attempt, 30))))


@dataclass
class DownloadRetry:
    """The retry policy of deployment downloads, from the agent's settings."""

    first_s: float = 2.0  # the backoff window after the first failure
    max_s: float = 60.0  # the window never grows past this
    max_attempts: int | None = None  # None: no cap, only the expiry and the deadline
    deadline_s: float | None = None  # counted from when the deployment was accepted
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempts: int) -> float:
        """How long to wait after the ``attempts``-th failure (1 for the first)."""
        return full_jitter(max(attempts - 1, 0), self.first_s, self.max_s, self.rng)

    def end(self, accepted_at: datetime, expires_at: datetime) -> tuple[datetime, GiveUp]:
        """The last moment an attempt may start, and why it is the last."""
        if self.deadline_s is not None:
            deadline = accepted_at + timedelta(seconds=self.deadline_s)
            if deadline < expires_at:
                return deadline, GiveUp.DEADLINE
        return expires_at, GiveUp.EXPIRED

    def stop(
        self, *, attempts: int, at: datetime, accepted_at: datetime, expires_at: datetime
    ) -> tuple[GiveUp, str] | None:
        """Why no attempt may start at ``at`` after ``attempts`` failures; None if one may."""
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return GiveUp.ATTEMPTS, f"download_attempts is {self.max_attempts}"
        end, why = self.end(accepted_at, expires_at)
        if at < end:
            return None
        if why is GiveUp.DEADLINE:
            return why, f"download_deadline_s ({self.deadline_s:g} s) ends at {_iso(end)}"
        return why, f"the manifest expires at {_iso(end)}"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
