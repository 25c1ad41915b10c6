"""Telemetry retention: raw rows (one per device, model and interval, every 10 s by default)
are kept for ``telemetry_raw_days``, then merged into one row per device, deployment,
model and hour; every row older than ``telemetry_keep_days`` is deleted.

An hour's row is exact where it can be: its histogram is the sum of the raw histograms
(fixed buckets add up), requests and errors are sums, p50/p95/p99 are read again from the
merged histogram, and ``interval_s`` is 3600. System stats (CPU, memory, temperature, disk)
are averages weighted by each row's interval. ``at`` is the end of the hour, as a raw row's
``at`` is the end of its interval. The hour's row re-uses the id of its first raw row, so
readers that follow the table by rising id (the daemon's counters, the fleet page's chart)
never see it as new telemetry and count it twice.

Work goes one device and at most one day of its rows per transaction, so ingest never
waits long for the write lock; ``budget_s`` bounds a whole run (the daemon's), and the next
run carries on where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.shared import N_BUCKETS, LatencyHistogram

from ..home import Home
from ..registry import Device, Telemetry

log = logging.getLogger(__name__)

HOUR_S = 3600.0
_HOUR = timedelta(hours=1)
_WINDOW = timedelta(days=1)  # raw rows merged per transaction: one device, at most a day
_DELETE_CHUNK = 20_000  # expired rows deleted per transaction
_SYSTEM = ("cpu_percent", "memory_used_bytes", "temperature_c", "disk_free_bytes")
_INTEGRAL = {"memory_used_bytes", "disk_free_bytes"}
_T = Telemetry.__table__.c  # type: ignore[attr-defined]
# rows are read as plain tuples: a day of one device is thousands of rows
_COLUMNS = (
    _T.id, _T.at, _T.interval_s, _T.deployment_id, _T.model, _T.requests, _T.errors,
    _T.latency_counts, *(_T[name] for name in _SYSTEM),
)  # fmt: skip


@dataclass(frozen=True)
class PruneReport:
    """What one ``prune_telemetry`` run did."""

    raw_before: datetime | None  # raw rows older than this were merged; None: merging is off
    keep_after: datetime | None  # rows older than this were deleted; None: kept for ever
    devices: int
    expired_rows: int  # deleted for being older than telemetry_keep_days
    merged_rows: int  # raw rows folded into hourly rows
    hourly_rows: int  # hourly rows written (a raw row re-used, or an existing one topped up)
    complete: bool  # False: stopped at budget_s; the next run carries on
    elapsed_s: float


def prune_telemetry(
    home: Home, *, now: datetime | None = None, budget_s: float | None = None
) -> PruneReport:
    """Apply the home's retention settings to the telemetry table (see the module). Safe to
    run again at any time: rows already hourly are left as they are."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    settings = home.settings
    keep_after = (
        now - timedelta(days=settings.telemetry_keep_days) if settings.telemetry_keep_days else None
    )
    raw_before = (
        _hour_of(now - timedelta(days=settings.telemetry_raw_days))
        if settings.telemetry_raw_days
        else None
    )

    def over_budget() -> bool:
        return budget_s is not None and time.monotonic() - started > budget_s

    with home.session() as session:
        device_ids = [i for i in session.exec(select(Device.id).order_by(col(Device.id))).all()]
    expired = merged = hourly = 0
    complete = True
    for device_id in device_ids:
        if keep_after is not None and _expires(home, device_id, keep_after):  # type: ignore[arg-type]
            while True:
                with home.session(write=True) as session:
                    gone = _delete_expired(session, device_id, keep_after)  # type: ignore[arg-type]
                expired += gone
                if gone < _DELETE_CHUNK:
                    break
                if over_budget():
                    complete = False
                    break
        while complete and raw_before is not None:
            with home.session(write=True) as session:
                done = _merge_next_window(session, device_id, raw_before)  # type: ignore[arg-type]
            if done is None:
                break
            merged, hourly = merged + done[0], hourly + done[1]
            if over_budget():
                complete = False
        if not complete:
            break
    return PruneReport(
        raw_before=raw_before,
        keep_after=keep_after,
        devices=len(device_ids),
        expired_rows=expired,
        merged_rows=merged,
        hourly_rows=hourly,
        complete=complete,
        elapsed_s=round(time.monotonic() - started, 3),
    )


class TelemetryRetention:
    """The daemon's job: ``prune_telemetry`` every ``every_s`` (an hour), each call working at
    most ``budget_s`` so the loop's other jobs wait no longer than that; while a backlog is
    left (the first run on a large registry), every call carries on with it."""

    def __init__(
        self,
        home: Home,
        *,
        every_s: float = HOUR_S,
        budget_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        utcnow: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.home = home
        self.every_s = every_s
        self.budget_s = budget_s
        self.clock = clock  # when the next run is due
        self.utcnow = utcnow  # which rows are old
        self._next = 0.0

    def __call__(self) -> None:
        if self.clock() < self._next:
            return
        report = prune_telemetry(self.home, now=self.utcnow(), budget_s=self.budget_s)
        self._next = self.clock() + (self.every_s if report.complete else 0.0)
        if report.expired_rows or report.merged_rows:
            log.info(
                "telemetry retention: %d raw rows merged into %d hourly rows, %d expired rows "
                "deleted in %.1f s%s",
                report.merged_rows,
                report.hourly_rows,
                report.expired_rows,
                report.elapsed_s,
                "" if report.complete else " (more to do)",
            )


def _utc(when: datetime) -> datetime:
    """SQLite hands back naive UTC, PostgreSQL the session's time zone (which may be half an
    hour off UTC)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _hour_of(when: datetime) -> datetime:
    return _utc(when).replace(minute=0, second=0, microsecond=0)


def _expires(home: Home, device_id: int, keep_after: datetime) -> bool:
    """Whether the device has a row to delete: one indexed read, so a run with nothing to
    delete takes no write lock for it."""
    with home.session() as session:
        oldest = session.execute(
            sa.select(sa.func.min(_T.at)).where(_T.device_id == device_id)
        ).scalar()
    return oldest is not None and _utc(oldest) < keep_after


def _delete_expired(session: Session, device_id: int, keep_after: datetime) -> int:
    doomed = (
        select(Telemetry.id)
        .where(Telemetry.device_id == device_id, col(Telemetry.at) < keep_after)
        .limit(_DELETE_CHUNK)
    )
    result = session.execute(sa.delete(Telemetry).where(col(Telemetry.id).in_(doomed)))
    return int(getattr(result, "rowcount", 0) or 0)


def _merge_next_window(
    session: Session, device_id: int, raw_before: datetime
) -> tuple[int, int] | None:
    """Merge the device's oldest day (at most) of raw rows before ``raw_before`` into hourly
    rows; None when there is nothing left to merge."""
    raw = (_T.device_id == device_id, _T.interval_s < HOUR_S)
    first = session.execute(sa.select(sa.func.min(_T.at)).where(*raw, _T.at < raw_before)).scalar()
    if first is None:
        return None
    start = _hour_of(first)
    end = min(start + _WINDOW, raw_before)
    in_window = (*raw, _T.at >= start, _T.at < end)
    rows = session.execute(sa.select(*_COLUMNS).where(*in_window).order_by(_T.at, _T.id)).all()
    groups: dict[tuple[str | None, str | None, datetime], list[Any]] = defaultdict(list)
    for row in rows:
        groups[(row.deployment_id, row.model, _hour_of(row.at))].append(row)
    hourly = session.execute(
        sa.select(*_COLUMNS).where(
            _T.device_id == device_id, _T.interval_s == HOUR_S, _T.at > start, _T.at <= end
        )
    ).all()
    existing = {(h.deployment_id, h.model, _hour_of(h.at) - _HOUR): h for h in hourly}
    updates = []
    for (deployment_id, model, hour), members in groups.items():
        earlier = existing.get((deployment_id, model, hour))
        keeper = earlier if earlier is not None else members[0]
        updates.append({"_id": keeper.id, **_merged(members, earlier), "at": hour + _HOUR})
    if updates:
        fields = [k for k in updates[0] if k != "_id"]
        session.execute(
            Telemetry.__table__.update()  # type: ignore[attr-defined]
            .where(_T.id == sa.bindparam("_id"))
            .values({k: sa.bindparam(k) for k in fields}),
            updates,
        )
    # every raw row of the window is now folded into an hourly row (the re-used ones are
    # hourly themselves now)
    session.execute(Telemetry.__table__.delete().where(*in_window))  # type: ignore[attr-defined]
    return len(rows), len(updates)


def _merged(rows: Sequence[Any], earlier: Any | None) -> dict[str, Any]:
    """The hour's values from its raw rows, topping up ``earlier`` (the hour's row already
    made, when raw rows of that hour arrived after it was)."""
    weighted: list[tuple[Any, float]] = [(r, max(r.interval_s or 0.0, 0.0)) for r in rows]
    if earlier is not None:
        covered = sum(w for _, w in weighted)
        weighted.append((earlier, max(HOUR_S - covered, 1.0)))
    histograms = [
        r.latency_counts
        for r, _ in weighted
        if r.latency_counts is not None and len(r.latency_counts) == N_BUCKETS
    ]
    # fixed buckets add up; summing columns is exact and much faster than merging one by one
    merged = (
        LatencyHistogram([sum(c) for c in zip(*histograms, strict=True)]) if histograms else None
    )
    values: dict[str, Any] = {
        "interval_s": HOUR_S,
        "requests": sum(r.requests for r, _ in weighted),
        "errors": sum(r.errors for r, _ in weighted),
        "latency_counts": merged.counts if merged is not None else None,
        "p50_ms": merged.percentile(50) if merged is not None else None,
        "p95_ms": merged.percentile(95) if merged is not None else None,
        "p99_ms": merged.percentile(99) if merged is not None else None,
    }
    for name in _SYSTEM:
        points = [(getattr(r, name), w) for r, w in weighted if getattr(r, name) is not None]
        total = sum(w for _, w in points)
        if not points:
            values[name] = None
        elif total <= 0:
            values[name] = points[-1][0]
        else:
            mean = sum(v * w for v, w in points) / total
            values[name] = round(mean) if name in _INTEGRAL else mean
    return values
