"""Whether the daemon is doing its work, as ``/healthz`` and ``/readyz`` tell it: its broker
link is up, its registry answers, and every job on the loop ran recently.

``/healthz`` answers ``200 ok`` only when all three hold, and ``503`` with one line per
reason otherwise; ``/readyz`` gives the same verdict (and status code) as JSON with every
check, for people and probes. The jobs and the registry check are recorded by ``run_jobs``
on the loop's thread; the broker is read from the link when asked.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from ..registry import utcnow
from ._web import WebAnswer

# A job is late once it has missed this many of its turns...
LATE_AFTER_TURNS = 3
# ...and never sooner than this: one slow transaction (a busy registry, a PUBACK waited
# for) holds up the whole loop for a few seconds without anything being wrong.
MIN_LATE_S = 10.0
# The job that asks the registry a cheap question; its outcome is the registry's check.
REGISTRY_CHECK = "registry"


class BrokerLink(Protocol):
    """What health needs of the broker link (``mqtt.MqttLink`` has it)."""

    @property
    def connected(self) -> bool: ...

    @property
    def since(self) -> datetime: ...

    @property
    def last_error(self) -> str | None: ...


@dataclass
class JobRecord:
    """How one job fared: its last successful run and its current run of failures."""

    every_s: float
    ok_at: datetime | None = None
    ok_clock: float | None = None  # ``clock()`` at ok_at
    error: str | None = None  # the latest failure's message, kept after a success
    error_at: datetime | None = None
    failures: int = 0  # in a row, up to now: 0 once it succeeds again
    failing_since: datetime | None = None


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reasons: tuple[str, ...]  # one line each, empty when healthy
    checks: dict[str, Any]  # /readyz's body


class Health:
    """The daemon's checks and their verdict. ``clock`` (seconds, monotonic) judges lateness;
    ``now`` (UTC) stamps what people read. Without a ``broker`` there is no broker check."""

    def __init__(
        self,
        broker: BrokerLink | None = None,
        *,
        broker_url: str = "",
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.broker = broker
        self.broker_url = broker_url
        self.clock = clock
        self.now = now
        self.started_clock = clock()
        self.started_at = now()
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.Lock()

    # -- what the loop records -----------------------------------------------------------

    def job_ran(self, name: str, every_s: float) -> JobRecord:
        """Record a successful run; returns the record as it was before (for logging)."""
        with self._lock:
            record = self._jobs.setdefault(name, JobRecord(every_s))
            before = JobRecord(**vars(record))
            record.every_s = every_s
            record.ok_at, record.ok_clock = self.now(), self.clock()
            record.failures, record.failing_since = 0, None
            return before

    def job_failed(self, name: str, every_s: float, error: str) -> JobRecord:
        """Record a failed run; returns the record as it was before (for logging)."""
        with self._lock:
            record = self._jobs.setdefault(name, JobRecord(every_s))
            before = JobRecord(**vars(record))
            record.every_s = every_s
            record.error, record.error_at = error, self.now()
            record.failures += 1
            record.failing_since = record.failing_since or record.error_at
            return before

    # -- the verdict ---------------------------------------------------------------------

    def verdict(self) -> Verdict:
        now, clock = self.now(), self.clock()
        with self._lock:
            jobs = {name: JobRecord(**vars(r)) for name, r in self._jobs.items()}
        reasons: list[str] = []
        checks: dict[str, Any] = {}
        if self.broker is not None:
            ok, reason, checks["broker"] = self._broker_check(now)
            if not ok:
                reasons.append(reason)
        registry = jobs.pop(REGISTRY_CHECK, None)
        ok, reason, checks["registry"] = self._registry_check(registry, now, clock)
        if not ok:
            reasons.append(reason)
        checks["jobs"] = {}
        for name, record in sorted(jobs.items()):
            ok, reason, checks["jobs"][name] = self._job_check(name, record, clock)
            if not ok:
                reasons.append(reason)
        body = {
            "status": "unhealthy" if reasons else "ok",
            "reasons": reasons,
            "checked_at": _iso(now),
            "started_at": _iso(self.started_at),
            "checks": checks,
        }
        return Verdict(healthy=not reasons, reasons=tuple(reasons), checks=body)

    def summary(self) -> str:
        """The reasons on one line ("" when healthy), for the heartbeat's ``detail``."""
        return "; ".join(self.verdict().reasons)

    def _broker_check(self, now: datetime) -> tuple[bool, str, dict[str, Any]]:
        assert self.broker is not None
        connected, since, error = self.broker.connected, self.broker.since, self.broker.last_error
        check = {
            "ok": connected,
            "url": self.broker_url,
            "connected": connected,
            "since": _iso(since),
            "last_error": error,
        }
        down_s = _seconds((now - since).total_seconds())
        why = error or "no answer yet"
        return connected, f"broker {self.broker_url}: not connected for {down_s}: {why}", check

    def _registry_check(
        self, record: JobRecord | None, now: datetime, clock: float
    ) -> tuple[bool, str, dict[str, Any]]:
        check = _job_fields(record)
        if record is not None and record.failing_since is not None:
            # unreachable at once, not only when late: its check is a question, not work
            down_s = _seconds((now - record.failing_since).total_seconds())
            check["ok"] = False
            return False, f"registry: unreachable for {down_s}: {record.error}", check
        late, reason = self._late(REGISTRY_CHECK, record, clock)
        check["ok"] = not late
        return not late, reason, check

    def _job_check(
        self, name: str, record: JobRecord, clock: float
    ) -> tuple[bool, str, dict[str, Any]]:
        check = _job_fields(record)
        late, reason = self._late(f"job {name}", record, clock)
        check["ok"] = not late
        return not late, reason, check

    def _late(self, what: str, record: JobRecord | None, clock: float) -> tuple[bool, str]:
        """Whether a job is late (its last success, or the start when it never succeeded,
        is more than its allowance ago), and the reason to give when it is."""
        if record is None or record.ok_clock is None:
            age_s = max(clock - self.started_clock, 0.0)
            reason = f"{what}: no successful run in the {_seconds(age_s)} since the start"
        else:
            age_s = max(clock - record.ok_clock, 0.0)
            reason = f"{what}: no successful run for {_seconds(age_s)}"
            reason += f" (every {_seconds(record.every_s)})"
        if record is not None and record.failures:
            reason += f"; {record.failures} failure(s) in a row: {record.error}"
        every_s = record.every_s if record is not None else 0.0
        return age_s > max(LATE_AFTER_TURNS * every_s, MIN_LATE_S), reason

    # -- what the HTTP server answers ----------------------------------------------------

    def answer(self, path: str) -> WebAnswer | None:
        """``/healthz`` and ``/readyz``; None for any other path."""
        if path not in ("/healthz", "/readyz"):
            return None
        verdict = self.verdict()
        status = HTTPStatus.OK if verdict.healthy else HTTPStatus.SERVICE_UNAVAILABLE
        headers = {"Cache-Control": "no-store"}
        if path == "/readyz":
            body = json.dumps(verdict.checks, indent=2).encode() + b"\n"
            return WebAnswer(status, body, "application/json", headers)
        text = "ok\n" if verdict.healthy else "".join(f"{r}\n" for r in verdict.reasons)
        return WebAnswer(status, text.encode(), headers=headers)

    def register_gauge(self, registry: CollectorRegistry) -> None:
        """``edgefleet_daemon_healthy``: 1 while ``/healthz`` would answer 200."""
        Gauge(
            "edgefleet_daemon_healthy",
            "1 while the daemon is healthy: broker connected, registry reachable, jobs on time.",
            registry=registry,
        ).set_function(lambda: float(self.verdict().healthy))


def _job_fields(record: JobRecord | None) -> dict[str, Any]:
    if record is None:
        return {"ok": True, "every_s": None, "last_ok_at": None, "last_error": None}
    return {
        "ok": True,
        "every_s": record.every_s,
        "last_ok_at": _iso(record.ok_at),
        "failures": record.failures,
        "last_error": record.error,
        "last_error_at": _iso(record.error_at),
    }


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
