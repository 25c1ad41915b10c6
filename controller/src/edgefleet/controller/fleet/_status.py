"""The fleet's read side: what every device runs and should run, how fast, how far its
online flag can be trusted, and the events the devices reported (with who started the
rollout they belong to, and why)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import func
from sqlmodel import Session, col, select

from edgefleet.shared.errors import ConfigError, NotFound

from ..home import Home
from ..registry import (
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Event,
    EventPublic,
    Model,
    ModelVersion,
    Rollout,
    Variant,
    as_utc,
    utcnow,
)
from ._daemon import daemon_state

# A device whose last status said online but from which nothing has come for this long is
# "stale": an agent sends telemetry every 10 s by default and the broker publishes its will
# 45 s (1.5 keepalives) after it goes quiet, so five minutes of silence means the daemon has
# stopped hearing the broker, not that the device is fine.
SILENT_AFTER = timedelta(minutes=5)
# A p95 older than this is not shown: the device has stopped serving, or stopped reporting.
P95_WINDOW = timedelta(hours=1)
ONLINE_STATES = ("online", "offline", "stale")
STATUS_STATES = (*ONLINE_STATES, *(s.value for s in DeploymentState))
# a row that no longer orders anything: its device's desired model is an older row's
_DEAD = (DeploymentState.SUPERSEDED.value, DeploymentState.CANCELLED.value)


def fleet_status(
    home: Home,
    *,
    profile: str | None = None,
    labels: Mapping[str, str | Sequence[str]] | None = None,
    state: str | None = None,
    model: str | None = None,
    now: datetime | None = None,
) -> list[DeviceStatus]:
    """Every device (or those matching every filter given), by name, in a constant number of
    queries whatever the fleet's size.

    ``labels`` maps a key to a value, or to values any of which will do; ``state`` is an
    online state (online, offline, stale) or the state of the device's deployment row that
    ``desired`` comes from; ``model`` is NAME or NAME:VERSION, matched against what the
    device serves and what it should. ``online`` is true only on fresh evidence (see
    ``SILENT_AFTER``) with a daemon alive and connected to the broker (``daemon_state``)."""
    if state is not None and state not in STATUS_STATES:
        raise ConfigError(f"unknown state {state!r}; choose from {', '.join(STATUS_STATES)}")
    if profile is not None:
        home.profile(profile)  # raises NotFound for a profile that does not exist
    now = (now or utcnow()).astimezone(UTC)  # SQLite compares the stored UTC text
    daemon = daemon_state(home, now=now)
    hearing = daemon.alive and daemon.broker_connected is not False
    with home.session() as session:
        if model is not None:
            _check_model(session, model)
        found = session.execute(_status_query(now, profile)).all()
        refs = _variant_refs(session)
    out = []
    for (
        name, device_profile, device_labels, reported, last_seen, agent, serving, serving_id,
        p95_ms, _, _, _, latest_state, desired_id, desired_variant, desired_state, committed,
        error_code, error_message,
    ) in found:  # the columns of _status_query, unpacked: at 10,000 devices it shows  # fmt: skip
        if labels and not _labelled(device_labels or {}, labels):
            continue
        seen = as_utc(last_seen)
        age = (now - seen).total_seconds() if seen is not None else None
        online_state = _online_state(reported, age, hearing)
        status = DeviceStatus(
            device=name,
            online=online_state == "online",
            profile=device_profile,
            model=_short(refs.get(committed)),
            state=desired_state or latest_state,
            p95_ms=p95_ms,
            last_seen=seen,
            online_state=online_state,
            reported_online=reported,
            age_s=age,
            labels=device_labels or {},
            desired=refs.get(desired_variant),
            deployment_id=desired_id,
            serving=serving,
            serving_deployment_id=serving_id,
            agent_version=agent,
        )
        status.attention = _attention(status, error_code, error_message)
        if _wanted(status, state, model):
            out.append(status)
    return out


def _status_query(now: datetime, profile: str | None) -> sa.Select[Any]:
    """Every device with its newest p95 and three of its deployment rows, in one statement:
    per device, index lookups only (deployment rows by device_id; the p95 is on the device's
    row), so its cost follows the fleet's size, not the history kept.

    The rows: its newest (``latest_state``), its newest still ordering a model (``desired``:
    neither superseded nor cancelled, of either kind, since a rollback row's variant is the
    model it goes back to) and its newest committed (``committed_variant``)."""
    device = Device.__table__  # type: ignore[attr-defined]
    deployment = Deployment.__table__  # type: ignore[attr-defined]
    d = deployment.c

    def newest(*where: Any) -> Any:
        # max() rather than ORDER BY id DESC LIMIT 1: PostgreSQL's planner could walk the
        # primary key backwards for that; max() keeps it on the device_id index
        query = sa.select(func.max(d.id)).where(d.device_id == device.c.id, *where)
        return query.correlate(device).scalar_subquery()

    # the newest p95 is kept on the device's row by ingest: no telemetry is read
    p95 = sa.case((device.c.p95_at >= now - P95_WINDOW, device.c.p95_ms), else_=None)
    c = device.c
    devices = sa.select(
        c.name, c.profile, c.labels, c.online, c.last_seen, c.agent_version, c.serving_model,
        c.serving_deployment_id, p95.label("p95_ms"), newest().label("latest"),
        newest(d.state.not_in(_DEAD)).label("live"),
        newest(d.state == DeploymentState.COMMITTED.value).label("done"),
    )  # fmt: skip
    if profile is not None:
        devices = devices.where(c.profile == profile)
    each = devices.subquery()
    latest, live, done = (deployment.alias(name) for name in ("latest", "live", "done"))
    return (
        sa.select(
            each,
            latest.c.state.label("latest_state"),
            live.c.deployment_id.label("desired_id"),
            live.c.variant_id.label("desired_variant"),
            live.c.state.label("desired_state"),
            done.c.variant_id.label("committed_variant"),
            live.c.error_code.label("error_code"),
            live.c.error_message.label("error_message"),
        )
        .select_from(each)
        .outerjoin(latest, latest.c.id == each.c.latest)
        .outerjoin(live, live.c.id == each.c.live)
        .outerjoin(done, done.c.id == each.c.done)
        .order_by(each.c.name)
    )


# Offline this long with an order still on its way: someone should look at the device.
GONE_AFTER = timedelta(hours=1)
_UNFINISHED = (
    DeploymentState.PENDING.value,
    DeploymentState.SENT.value,
    DeploymentState.IN_PROGRESS.value,
)


def _attention(s: DeviceStatus, error_code: str | None, error: str | None) -> str | None:
    """What only an operator can fix about this device, plainly; None when nothing is.

    Everything else repairs itself: orders the broker lost are sent again, events it lost
    are read from the device's status, downloads retry until the manifest expires."""
    if s.state == DeploymentState.FAILED.value and s.serving_deployment_id != s.deployment_id:
        if error_code == "device_lost":
            heard = f"nothing heard for {_age(s.age_s)}" if s.age_s is not None else "never heard"
            return (
                f"lost: silent after its order ({heard}); it installs the order if it comes"
                " back: check the device and its link, or remove it"
            )
        why = f"{error_code}: {error}" if error else error_code or "failed"
        return f"failed ({why[:120]}); fix the cause and deploy again"
    gone = s.age_s is not None and s.age_s > GONE_AFTER.total_seconds()
    if s.online_state != "online" and gone and s.state in _UNFINISHED:
        return f"{s.online_state} for {_age(s.age_s)} with an order waiting: check the device"
    return None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "ever"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.0f} h" if minutes < 48 * 60 else f"{minutes / 1440:.0f} days"


def _online_state(
    reported: bool, age_s: float | None, hearing: bool
) -> Literal["online", "offline", "stale"]:  # registry's OnlineState
    """A device's own "offline" (its will, or nothing ever heard) stands; its "online" holds
    only while a daemon is alive and connected to the broker, so it would have heard the
    will, and the device spoke recently."""
    if not reported:
        return "offline"
    if hearing and age_s is not None and age_s <= SILENT_AFTER.total_seconds():
        return "online"
    return "stale"


def _labelled(have: dict[str, str], wanted: Mapping[str, str | Sequence[str]]) -> bool:
    """Each key's label is its wanted value, or one of them (as ``deploy --label`` picks)."""
    return all(
        have.get(key) in ([value] if isinstance(value, str) else value)
        for key, value in wanted.items()
    )


def _wanted(status: DeviceStatus, state: str | None, model: str | None) -> bool:
    if state in ONLINE_STATES and status.online_state != state:
        return False
    if state is not None and state not in ONLINE_STATES and status.state != state:
        return False
    if model is None:
        return True
    return any(_matches(ref, model) for ref in (status.serving, status.desired))


def _matches(ref: str | None, wanted: str) -> bool:
    """Whether ``ref`` (name:version/variant) is of model ``wanted`` (NAME or NAME:VERSION)."""
    if ref is None:
        return False
    name_version = ref.split("/", 1)[0]
    if ":" in wanted:
        return name_version == wanted
    return name_version.split(":", 1)[0] == wanted


def _short(ref: str | None) -> str | None:
    return ref.split("/", 1)[0] if ref else None


def _check_model(session: Session, wanted: str) -> None:
    name, _, version = wanted.partition(":")
    query = select(Model.id).where(Model.name == name)
    if version:
        query = query.join(ModelVersion, col(ModelVersion.model_id) == col(Model.id)).where(
            ModelVersion.version == version
        )
    if session.exec(query).first() is None:
        raise NotFound(f"unknown model {wanted}")


def _variant_refs(session: Session) -> dict[int, str]:
    """variant id -> name:version/variant"""
    rows = session.exec(
        select(Variant.id, Variant.name, Model.name, ModelVersion.version)
        .join(ModelVersion, col(ModelVersion.id) == col(Variant.model_version_id))
        .join(Model, col(Model.id) == col(ModelVersion.model_id))
    ).all()
    return {vid: f"{name}:{version}/{variant}" for vid, variant, name, version in rows if vid}


def list_events(
    home: Home, *, device: str | None = None, limit: int = 200, after: int = 0
) -> list[EventPublic]:
    """The newest ``limit`` events with an id above ``after``, oldest first; an event of a
    rollout's row carries who started the rollout and why."""
    with home.session() as session:
        query = (
            select(Event, Device.name, Rollout.started_by, Rollout.note)
            .join(Device, col(Device.id) == col(Event.device_id))
            .outerjoin(
                Deployment,
                sa.and_(
                    col(Deployment.deployment_id) == col(Event.deployment_id),
                    col(Deployment.device_id) == col(Event.device_id),
                ),
            )
            .outerjoin(Rollout, col(Rollout.id) == col(Deployment.rollout_id))
        )
        if device is not None:
            if session.exec(select(Device.id).where(Device.name == device)).first() is None:
                raise NotFound(f"unknown device {device!r}")
            query = query.where(Device.name == device)
        rows = session.exec(
            query.where(col(Event.id) > after).order_by(col(Event.id).desc()).limit(limit)
        ).all()
        return [
            EventPublic(
                id=e.id,  # type: ignore[arg-type]
                at=as_utc(e.at),  # type: ignore[arg-type]
                device=name,
                deployment_id=e.deployment_id,
                state=e.state,
                ok=e.ok,
                error_code=e.error_code,
                message=e.message,
                details=e.details,
                started_by=started_by,
                note=note,
            )
            for e, name, started_by, note in reversed(rows)
        ]


def follow_events(
    home: Home,
    *,
    device: str | None = None,
    limit: int = 200,
    poll_s: float = 0.5,
    stopped: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] | None = None,
) -> Iterator[EventPublic]:
    """The newest ``limit`` events, then every new one as the daemon stores it, until
    ``stopped()`` is true (checked between polls) or the caller stops iterating."""
    import time

    pause = sleep or time.sleep
    rows = list_events(home, device=device, limit=limit)
    last = 0
    while True:
        for event in rows:
            last = max(last, event.id)
            yield event
        if stopped():
            return
        pause(poll_s)
        rows = list_events(home, device=device, limit=1000, after=last)
