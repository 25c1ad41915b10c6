"""Whether an ``edgefleet serve`` is alive, from the heartbeat it writes into the registry
(``daemon_heartbeat``), so commands like ``deploy`` and ``status`` can say when nothing will
send their orders or hear the devices."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlmodel import col, select

from ..home import Home
from ..registry import DaemonHeartbeat, as_utc, utcnow

# A daemon that missed this many beats in a row is no longer counted alive: one late beat
# (a slow transaction, a busy registry) is not a dead daemon.
STALE_AFTER_BEATS = 3


class DaemonLiveness(StrEnum):
    ALIVE = "alive"  # a beat younger than STALE_AFTER_BEATS intervals, not stopped
    STALE = "stale"  # it stopped, or its last beat is older than that
    ABSENT = "absent"  # no daemon has ever beaten against this registry


@dataclass(frozen=True)
class DaemonState:
    """The newest heartbeat as ``daemon_state`` judged it at ``now``. Every field but
    ``liveness`` is None when it is ``ABSENT``."""

    liveness: DaemonLiveness
    name: str | None = None  # the daemon's MQTT client id
    host: str | None = None
    pid: int | None = None
    version: str | None = None
    started_at: datetime | None = None
    beat_at: datetime | None = None
    stopped_at: datetime | None = None  # a clean shutdown's last beat
    age_s: float | None = None  # seconds from the last beat (or the stop) to ``now``
    every_s: float | None = None
    broker_connected: bool | None = None
    detail: str | None = None  # why it said it was unhealthy; "" when healthy

    @property
    def alive(self) -> bool:
        return self.liveness is DaemonLiveness.ALIVE

    def describe(self) -> str:
        """One line for people, e.g. "serve on ctl-1:4242 alive, broker connected",
        "serve on ctl-1:4242 last seen 5 min ago", "no daemon has run against this
        registry"."""
        if self.liveness is DaemonLiveness.ABSENT:
            return "no daemon has run against this registry"
        who = f"serve on {self.host}:{self.pid}"
        if self.liveness is DaemonLiveness.STALE:
            if self.stopped_at is not None:
                return f"{who} stopped {_ago(self.age_s or 0.0)}"
            return f"{who} last seen {_ago(self.age_s or 0.0)}"
        if self.detail:
            return f"{who} alive but unhealthy: {self.detail}"
        broker = "connected" if self.broker_connected else "not connected"
        return f"{who} alive, broker {broker}"


def daemon_state(home: Home, *, now: datetime | None = None) -> DaemonState:
    """Whether a daemon is alive at ``now`` (default: the current time), judged by the newest
    heartbeat in the registry: ``ALIVE`` when it is younger than ``STALE_AFTER_BEATS`` of its
    intervals and the daemon did not stop; ``STALE`` otherwise; ``ABSENT`` when no daemon
    ever ran against this registry. One query; never raises for a missing heartbeat."""
    now = (now or utcnow()).astimezone(UTC)
    with home.session() as session:
        beat = session.exec(
            select(DaemonHeartbeat).order_by(col(DaemonHeartbeat.beat_at).desc()).limit(1)
        ).first()
    if beat is None:
        return DaemonState(DaemonLiveness.ABSENT)
    beat_at = as_utc(beat.beat_at) or now
    stopped_at = as_utc(beat.stopped_at)
    age_s = max((now - (stopped_at or beat_at)).total_seconds(), 0.0)  # clocks can disagree
    fresh = stopped_at is None and age_s <= STALE_AFTER_BEATS * beat.every_s
    return DaemonState(
        DaemonLiveness.ALIVE if fresh else DaemonLiveness.STALE,
        name=beat.name,
        host=beat.host,
        pid=beat.pid,
        version=beat.version,
        started_at=as_utc(beat.started_at),
        beat_at=beat_at,
        stopped_at=stopped_at,
        age_s=age_s,
        every_s=beat.every_s,
        broker_connected=beat.broker_connected,
        detail=beat.detail,
    )


def record_heartbeat(home: Home, beat: DaemonHeartbeat) -> None:
    """Write ``beat`` over the daemon's previous one (one row per daemon ``name``)."""
    with home.session(write=True) as session:
        session.merge(beat)


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
