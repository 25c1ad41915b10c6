"""What devices say, written into the registry: status, deployment events and telemetry.

Handlers take typed messages (decoded by ``edgefleet.shared.decode``), never raw
payloads, and are idempotent: QoS 1 delivers some messages twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from edgefleet.shared import DeviceState, EventMessage, StatusMessage, TelemetryMessage

from ..registry import (
    FINISHED_STATES,
    Deployment,
    DeploymentKind,
    DeploymentState,
    Device,
    DeviceTrustUpdate,
    Event,
    Telemetry,
    TrustUpdateState,
)
from ._known import Inbound, Known, utc

log = logging.getLogger("edgefleet.controller.ingest")

# The agent's event states, and what each means for the controller's row.
_EVENT_TO_STATE = {
    DeviceState.COMMITTED: DeploymentState.COMMITTED,
    DeviceState.FAILED: DeploymentState.FAILED,
    DeviceState.REJECTED: DeploymentState.FAILED,
    DeviceState.ROLLED_BACK: DeploymentState.ROLLED_BACK,
}


def ingest(session: Session, device_name: str, message: Inbound) -> bool:
    """Write one message from device ``device_name``; False if the device is unknown."""
    return ingest_many(session, [(device_name, message)]) == 1


def ingest_many(
    session: Session, batch: Iterable[tuple[str, Inbound]], *, now: datetime | None = None
) -> int:
    """Write a batch in the caller's transaction; returns how many messages were kept.
    ``now`` is when it arrived (the controller's clock).

    Built for throughput: the batch's devices, the rows and events its messages name are
    read in one query each, telemetry goes in with one multi-row INSERT, and nothing is
    written before the transaction commits."""
    with session.no_autoflush:
        return _ingest_many(session, list(batch), now)


def _ingest_many(session: Session, batch: list[tuple[str, Inbound]], now: datetime | None) -> int:
    names = {name for name, _ in batch}
    devices = {d.name: d for d in session.exec(select(Device).where(col(Device.name).in_(names)))}
    telemetry: list[dict[str, Any]] = []
    known = Known.read(session, devices, batch)
    kept = 0
    now = now or datetime.now(UTC)
    for device_name, message in batch:
        if getattr(message, "device_id", device_name) != device_name:
            log.warning("message on %s's topic claims device %s; dropped", device_name, message)
            continue
        device = devices.get(device_name)
        if device is None:
            log.info("message from unknown device %s dropped", device_name)
            continue
        kept += 1
        if isinstance(message, StatusMessage):
            _status(session, known, device, message, now)
        elif isinstance(message, EventMessage):
            _event(session, known, device, message, now)
        else:
            device.last_seen = now
            key = (device.id, utc(message.sent_at))
            if key in known.intervals:
                continue  # a QoS 1 redelivery of an interval already stored
            known.intervals.add(key)
            telemetry += _telemetry_rows(device, message)
            _newest_p95(device, message)
        session.add(device)
    if telemetry:
        session.execute(insert(Telemetry), telemetry)
    return kept


def _status(
    session: Session, known: Known, device: Device, msg: StatusMessage, now: datetime
) -> None:
    # The broker retains the newest status it got, but an agent's statuses queued while it
    # was offline may reach it after a newer one: the device's own stamp decides.
    device.online = msg.online
    if msg.online:
        device.last_seen = now
    if msg.agent_version:
        device.agent_version = msg.agent_version
    device.last_sequence = max(device.last_sequence, msg.last_sequence)
    # a last will carries the status of when the agent connected: not what it serves now
    if not msg.online:
        return
    if device.status_at is not None and utc(msg.sent_at) < utc(device.status_at):
        return  # an older status sent late (queued while offline): the newer one stands
    device.serving_deployment_id = msg.active.deployment_id if msg.active else None
    device.serving_model = str(msg.active.model) if msg.active else None
    device.previous_deployment_id = msg.previous.deployment_id if msg.previous else None
    device.status_at = utc(msg.sent_at)
    device.status_deployment_id = msg.deployment_id
    device.status_state = msg.state.value
    device.status_sequence = msg.last_sequence
    device.status_received_at = now
    _reconcile_row(session, known, device, msg, now)


# What a status's state says about the deployment it names, when its events were lost.
_STATUS_TO_STATE = {
    DeviceState.FAILED: DeploymentState.FAILED,
    DeviceState.ROLLED_BACK: DeploymentState.ROLLED_BACK,
}


def _reconcile_row(
    session: Session, known: Known, device: Device, msg: StatusMessage, now: datetime
) -> None:
    """The row of the deployment the status names, brought up to date from it: the device's
    own report stands in for events that were lost (a broker that crashed with them, a
    daemon that was down). A row whose events did arrive is already where this puts it."""
    if not msg.deployment_id:
        return
    row = known.row(device, msg.deployment_id)
    if row is None or row.sequence is None:
        return  # not ours, or never sent: nothing the device could have received
    if msg.state is DeviceState.COMMITTED:
        serving = msg.active is not None and msg.active.deployment_id == row.deployment_id
        target = DeploymentState.COMMITTED if serving else None
    else:
        target = _STATUS_TO_STATE.get(msg.state, DeploymentState.IN_PROGRESS)
    if target is None or row.state == target.value:
        return
    if row.state in FINISHED_STATES and not _lost(row):
        return  # settled by the device's events, which say more
    if target not in FINISHED_STATES and row.state == DeploymentState.IN_PROGRESS.value:
        return
    why = None
    if target is DeploymentState.FAILED:
        lost = "the device's status says it failed; its events were lost"
        why = (msg.error_code or "failed", f"{msg.error} ({lost})" if msg.error else lost)
    log.info(
        "%s on %s: %s -> %s from the device's status", row.deployment_id, device.name,
        row.state, target.value,
    )  # fmt: skip
    _settle(session, device, row, target, why, utc(msg.sent_at), now)


def _event(
    session: Session, known: Known, device: Device, msg: EventMessage, now: datetime
) -> None:
    if not known.new_event(device, msg):
        return
    details: dict[str, object] = dict(msg.details)
    details.update({f"{k}_ms": v for k, v in msg.timings_ms.items() if f"{k}_ms" not in details})
    session.add(
        Event(
            device_id=device.id,  # type: ignore[arg-type]
            deployment_id=msg.deployment_id,
            state=msg.state,
            ok=msg.ok,
            error_code=msg.error_code,
            message=msg.message,
            details=details or None,
            at=msg.sent_at,
            received_at=now,
        )
    )
    device.last_seen = now
    row = known.row(device, msg.deployment_id)
    if row is None:
        row = _refused_command(session, device, msg)
    if row is None:
        _trust_answer(session, device, msg, now)
        return
    if row.state in FINISHED_STATES and not _lost(row):
        return  # already settled: a late duplicate
    target = _EVENT_TO_STATE.get(msg.state, DeploymentState.IN_PROGRESS)
    if _lost(row) and target not in FINISHED_STATES:
        return  # a device presumed lost is settled only by how its order ended
    why = None if msg.ok else (msg.error_code or "failed", msg.message)
    _settle(session, device, row, target, why, utc(msg.sent_at), now)


def _settle(
    session: Session,
    device: Device,
    row: Deployment,
    target: DeploymentState,
    error: tuple[str, str] | None,
    at: datetime,
    now: datetime,
) -> None:
    """Move ``row`` to ``target`` as the device reported at ``at`` (its clock)."""
    row.state = target.value
    row.payload = None  # the device has it: never resent, no need to keep the bytes
    if error is not None:
        row.error_code, row.error_message = error
    elif row.error_code == _LOST:
        row.error_code = row.error_message = None
    if target is DeploymentState.COMMITTED:
        row.committed_at = at  # the device's clock, as its telemetry's
    row.updated_at = now
    session.add(row)
    if row.kind == DeploymentKind.ROLLBACK.value and target is DeploymentState.ROLLED_BACK:
        _undone(session, device, row, now)


_LOST = "device_lost"


def _refused_command(session: Session, device: Device, msg: EventMessage) -> Deployment | None:
    """The row of a command the device refused without naming it (it could not read the
    deployment id: a signature it does not trust), found by the digest of its bytes."""
    digest = msg.details.get("command_sha256")
    if msg.deployment_id or msg.state is not DeviceState.REJECTED or not isinstance(digest, str):
        return None
    return session.exec(
        select(Deployment).where(
            Deployment.device_id == device.id, Deployment.command_sha256 == digest
        )
    ).first()


def _lost(row: Deployment) -> bool:
    """Failed by the in-progress timeout, not by the device: its own report still counts."""
    return row.state == DeploymentState.FAILED and row.error_code == _LOST


def _undone(session: Session, device: Device, rollback: Deployment, now: datetime) -> None:
    """A rollback went through: the deployment it undid is rolled back on that device."""
    undone = session.exec(
        select(Deployment).where(
            Deployment.deployment_id == rollback.undoes,
            Deployment.device_id == device.id,
            Deployment.kind == DeploymentKind.DEPLOY.value,
        )
    ).first()
    if undone is not None and undone.state != DeploymentState.ROLLED_BACK:
        undone.state = DeploymentState.ROLLED_BACK.value
        undone.updated_at = now
        session.add(undone)


# What a device's answer to a trust update means for its row.
_TRUST_ANSWERS = {
    DeviceState.TRUST_UPDATED: TrustUpdateState.CONFIRMED,
    DeviceState.REJECTED: TrustUpdateState.FAILED,
}


def _trust_answer(session: Session, device: Device, msg: EventMessage, now: datetime) -> None:
    """A device applied (or refused) a trust update: the row named by the event's id."""
    target = _TRUST_ANSWERS.get(msg.state)
    if target is None or not msg.deployment_id:
        return
    row = session.exec(
        select(DeviceTrustUpdate).where(
            DeviceTrustUpdate.update_id == msg.deployment_id,
            DeviceTrustUpdate.device_id == device.id,
        )
    ).first()
    if row is None or row.state == TrustUpdateState.CONFIRMED.value:
        return  # not ours (a rollback order, a test), or settled: a refused replay changes nothing
    row.state = target.value
    row.payload = None  # the device has it: never resent
    row.error_code = None if msg.ok else msg.error_code
    row.error_message = None if msg.ok else msg.message
    row.updated_at = now
    session.add(row)


def _newest_p95(device: Device, msg: TelemetryMessage) -> None:
    """Keep the device's newest p95 on its row, so `status` reads no telemetry: the last
    model of the message that served requests (during a swap, the new one comes last)."""
    at = utc(msg.sent_at)
    known = device.p95_at
    if known is not None and utc(known) >= at:
        return  # an older interval, redelivered or late
    for stats in reversed(msg.models):
        if stats.p95_ms is not None:
            device.p95_ms, device.p95_at = stats.p95_ms, at
            return


def _telemetry_rows(device: Device, msg: TelemetryMessage) -> list[dict[str, Any]]:
    system = msg.system
    common: dict[str, Any] = {
        "device_id": device.id,
        "at": utc(msg.sent_at),  # SQLite keeps no offset: store every instant as UTC
        "interval_s": msg.interval_s,
        "cpu_percent": system.cpu_percent,
        "memory_used_bytes": system.memory_used_bytes,
        "temperature_c": system.temperature_c,
        "disk_free_bytes": system.disk_free_bytes,
    }
    if not msg.models:
        return [common]
    return [
        {
            **common,
            "model": str(stats.model),
            "deployment_id": stats.deployment_id,
            "requests": stats.requests,
            "errors": stats.errors,
            "latency_counts": list(stats.latency_counts),
            "p50_ms": stats.p50_ms,
            "p95_ms": stats.p95_ms,
            "p99_ms": stats.p99_ms,
        }
        for stats in msg.models
    ]
