"""What one ingest batch needs to know from the registry before it writes, read in one
query each rather than one a message: the deployment rows its statuses and events name,
the events it may repeat and the telemetry intervals it may repeat (QoS 1 delivers some
messages twice). Kept up to date as the batch is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from edgefleet.shared import EventMessage, StatusMessage, TelemetryMessage

from ..registry import Deployment, Device, Event, Telemetry

Inbound = StatusMessage | EventMessage | TelemetryMessage


def utc(when: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes, PostgreSQL aware ones: compare them as UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass
class Known:
    rows: dict[tuple[int | None, str], Deployment] = field(default_factory=dict)
    events: set[tuple[int | None, str | None, str, datetime]] = field(default_factory=set)
    # (device id, sent_at) of telemetry stored: a device stamps each interval once
    intervals: set[tuple[int | None, datetime]] = field(default_factory=set)

    @classmethod
    def read(
        cls, session: Session, devices: dict[str, Device], batch: list[tuple[str, Inbound]]
    ) -> Known:
        """Each query reads a range of a (device, time) index per device: two IN lists
        (devices, times) would probe the index for every pair of them."""
        known = cls()
        named = [(n, m) for n, m in batch if isinstance(m, StatusMessage | EventMessage)]
        ids = {devices[n].id for n, _ in named if n in devices}
        deployments = {m.deployment_id for _, m in named if m.deployment_id}
        if ids and deployments:
            for row in session.exec(
                select(Deployment).where(
                    col(Deployment.device_id).in_(ids),
                    col(Deployment.deployment_id).in_(deployments),
                )
            ):
                known.rows[(row.device_id, row.deployment_id)] = row
        stamps = [utc(m.sent_at) for _, m in named if isinstance(m, EventMessage)]
        if ids and stamps:
            query = select(Event.device_id, Event.deployment_id, Event.state, Event.at).where(
                col(Event.device_id).in_(ids),
                col(Event.at) >= min(stamps),
                col(Event.at) <= max(stamps),
            )
            known.events = {(d, dep, state, utc(at)) for d, dep, state, at in session.exec(query)}
        sent = [(n, m) for n, m in batch if isinstance(m, TelemetryMessage) and n in devices]
        if sent:
            times = [utc(m.sent_at) for _, m in sent]
            stored = select(Telemetry.device_id, Telemetry.at).where(
                col(Telemetry.device_id).in_({devices[n].id for n, _ in sent}),
                col(Telemetry.at) >= min(times),
                col(Telemetry.at) <= max(times),
            )
            known.intervals = {(d, utc(at)) for d, at in session.exec(stored)}
        return known

    def row(self, device: Device, deployment_id: str) -> Deployment | None:
        return self.rows.get((device.id, deployment_id))

    def new_event(self, device: Device, msg: EventMessage) -> bool:
        """Whether ``msg`` is news; noted as stored if so."""
        key = (device.id, msg.deployment_id, msg.state.value, utc(msg.sent_at))
        if key in self.events:
            return False
        self.events.add(key)
        return True
