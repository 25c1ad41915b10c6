"""Following a deployment: where each device is now, and waiting until every one is done."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlmodel import col, select

from edgefleet.shared.errors import NotFound

from ..home import Home
from ..registry import (
    FINISHED_STATES,
    Deployment,
    DeploymentPublic,
    Device,
    Variant,
)
from ._views import variant_ref


def deployment_progress(home: Home, deployment_id: str) -> list[DeploymentPublic]:
    """Where every device of one deployment is now."""
    with home.session() as session:
        rows = session.exec(
            select(Deployment, Device, Variant)
            .join(Device, Device.id == Deployment.device_id)  # type: ignore[arg-type]
            .join(Variant, Variant.id == Deployment.variant_id)  # type: ignore[arg-type]
            .where(Deployment.deployment_id == deployment_id)
            .order_by(col(Device.name))
        ).all()
        if not rows:
            raise NotFound(f"unknown deployment {deployment_id!r}")
        out = []
        for dep, device, variant in rows:
            out.append(
                DeploymentPublic(
                    deployment_id=dep.deployment_id,
                    device=device.name,
                    profile=device.profile,
                    model=variant_ref(session, variant.id),  # type: ignore[arg-type]
                    state=dep.state,
                    error_code=dep.error_code,
                    error_message=dep.error_message,
                )
            )
        return out


def wait_for_deployment(
    home: Home,
    deployment_id: str,
    *,
    timeout_s: float,
    poll_s: float = 0.5,
    on_change: Callable[[DeploymentPublic], None] | None = None,
    on_progress: Callable[[list[DeploymentPublic], float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[DeploymentPublic]:
    """Poll the registry (the daemon writes progress there) until every device's part is
    finished or ``timeout_s`` has passed; return the rows as they are then. ``on_change`` is
    called with a row each time its state differs from the last one seen, ``on_progress``
    after every look with all the rows and the seconds since the wait began."""
    start = clock()
    deadline = start + timeout_s
    last: dict[str, str] = {}
    while True:
        rows = deployment_progress(home, deployment_id)
        for row in rows:
            if on_change is not None and last.get(row.device) != row.state:
                on_change(row)
            last[row.device] = row.state
        if on_progress is not None:
            on_progress(rows, clock() - start)
        if all(row.state in FINISHED_STATES for row in rows) or clock() > deadline:
            return rows
        sleep(poll_s)
