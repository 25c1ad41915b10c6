"""Reconciliation: orders the registry thinks are on their way, checked against what each
device says, so that the registry and the fleet agree again after any fault on their own.

A broker that crashes can lose commands it had acknowledged (dispatch has already dropped
their bytes) and events devices had published; a daemon that was down misses nothing
(the broker keeps its session) but a broker without persistence forgets everything. The
device's retained status, published again on every reconnect and on every change, says
which deployment it last accepted, the state it reached there and its last sequence
number. Ingest brings the row that status names up to date (``daemon._ingest``); this
sweep handles the rest:

- an order with no news for ``grace_s`` (sent and never heard of, or in progress and gone
  quiet) makes the daemon *ping* the device, on the same command topic: MQTT delivers one
  publisher's messages on a topic in order, so the status that answers the ping was sent
  after the device got the order, if the broker still had it;
- a status that arrived after the ping and shows a sequence below the order's, naming
  another deployment, means the order never reached the device: the row goes back to
  ``pending`` and dispatch sends it again, re-signed with a fresh sequence and the same
  deployment id (the agent applies a deployment id once, so a copy that was only late does
  no harm), at most ``MAX_RESENDS`` times; past that, the in-progress timeout decides.

Only devices whose last status said online are pinged: an offline one gets its queued
orders, and the ping after them, when it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlmodel import col, select

from edgefleet import shared
from edgefleet.shared import PingCommand

from ..home import Home
from ..registry import Deployment, DeploymentState, Device, as_utc

log = logging.getLogger("edgefleet.controller.reconcile")

Publish = Callable[[str, bytes], None]

# How often one row is sent again because its device showed it never received it.
MAX_RESENDS = 5
DEFAULT_GRACE_S = 30.0


@dataclass
class Reconciled:
    pinged: list[str] = field(default_factory=list)  # device names
    resent: list[tuple[str, str]] = field(default_factory=list)  # (deployment id, device)


def reconcile(
    home: Home,
    publish: Publish,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    now: datetime | None = None,
) -> Reconciled:
    """One sweep: orders the devices never received go back to ``pending``; devices with
    orders that had no news for ``grace_s`` are pinged. Pings are published after the
    transaction that records them commits (a lost ping is sent again ``grace_s`` later)."""
    now = now or datetime.now(UTC)
    quiet = now - timedelta(seconds=grace_s)
    out = Reconciled()
    with home.session(write=True) as session:
        rows = session.exec(
            select(Deployment, Device)
            .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
            .where(
                col(Deployment.state).in_(
                    [DeploymentState.SENT.value, DeploymentState.IN_PROGRESS.value]
                ),
                col(Deployment.payload).is_(None),  # the broker acknowledged it
                col(Deployment.sequence).is_not(None),
            )
            .order_by(col(Deployment.id))
        ).all()
        ping: dict[str, Device] = {}
        for row, device in rows:
            if _never_received(row, device):
                if row.resends >= MAX_RESENDS:
                    continue  # the in-progress timeout settles it
                log.warning(
                    "%s never reached %s (its status after our ping shows sequence %d < %d):"
                    " sending it again",
                    row.deployment_id, device.name, device.status_sequence, row.sequence,
                )  # fmt: skip
                row.state = DeploymentState.PENDING.value
                row.resends += 1
                row.pinged_at = None
                row.updated_at = now
                session.add(row)
                out.resent.append((row.deployment_id, device.name))
                continue
            news = max(filter(None, (as_utc(row.updated_at), as_utc(row.sent_at))))
            pinged = as_utc(row.pinged_at)
            if news > quiet or (pinged is not None and pinged > quiet) or not device.online:
                continue
            row.pinged_at = now
            session.add(row)
            ping[device.name] = device
    prefix = home.settings.topic_prefix
    for name in ping:
        publish(shared.command_topic(name, prefix), shared.encode(PingCommand(nonce=_nonce(now))))
        out.pinged.append(name)
    if out.pinged:
        log.info("pinged %d device(s) about orders with no news for %.0f s", len(ping), grace_s)
    return out


def _never_received(row: Deployment, device: Device) -> bool:
    """The device's status arrived after our ping and shows it never accepted the order:
    its last sequence is below the order's and it names another deployment."""
    pinged, heard = as_utc(row.pinged_at), as_utc(device.status_received_at)
    return (
        row.state == DeploymentState.SENT.value
        and pinged is not None
        and heard is not None
        and heard > pinged
        and row.sequence is not None
        and device.status_sequence < row.sequence
        and device.status_deployment_id != row.deployment_id
    )


def _nonce(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S.%f")
