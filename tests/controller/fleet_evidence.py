"""What the daemon would have written into the registry, for tests of the read side: its
heartbeat, a device's retained status (through the real ingest), deployment rows' states;
and a small fleet enrolled with the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import select

from edgefleet.controller import Deployment, Device, Home, load_settings, open_home
from edgefleet.controller.daemon import ingest_many
from edgefleet.controller.fleet import record_heartbeat
from edgefleet.controller.registry import DaemonHeartbeat
from edgefleet.shared import ModelRef, ServingModel, StatusMessage

from .conftest import Cli


@contextmanager
def opened(home_dir: Path) -> Iterator[Home]:
    home = open_home(load_settings(home_dir))
    try:
        yield home
    finally:
        home.close()


def beat(home: Home, *, age_s: float = 1.0, stopped: bool = False, broker: bool = True) -> None:
    """What a daemon beating every 5 s would have written ``age_s`` ago."""
    at = datetime.now(UTC) - timedelta(seconds=age_s)
    record_heartbeat(
        home,
        DaemonHeartbeat(
            name="serve-test", host="ctl", pid=42, version="0", every_s=5.0, started_at=at,
            beat_at=at, stopped_at=at if stopped else None, broker_connected=broker,
        ),
    )  # fmt: skip


def say(home: Home, device: str, online: bool, serving: tuple[str, str] | None = None) -> None:
    """The device's retained status as the daemon ingests it; ``serving``: (ref, dep id)."""
    active = None
    if serving is not None:
        name_version, variant = serving[0].split("/")
        name, version = name_version.split(":")
        model = ModelRef(name=name, version=version, variant=variant)
        active = ServingModel(model=model, deployment_id=serving[1], sha256="ab" * 32)
    message = StatusMessage(device_id=device, online=online, agent_version="1.0", active=active)
    with home.session(write=True) as session:
        ingest_many(session, [(device, message)])


def set_rows(home: Home, device: str, state: str) -> None:
    with home.session(write=True) as session:
        for row in session.exec(
            select(Deployment).join(Device).where(Device.name == device)  # type: ignore[arg-type]
        ):
            row.state = state
            session.add(row)


def enrol_lab(cli: Cli, model_file: Path, model_file_v2: Path) -> None:
    """pi-a and pi-b (rpi4) and box-1 (x86-edge); digits 1.0.0 and 2.0.0; no daemon yet."""
    cli.ok("device", "add", "pi-a", "--profile", "rpi4", "-l", "site=lab")
    cli.ok("device", "add", "pi-b", "--profile", "rpi4", "-l", "site=home")
    cli.ok("device", "add", "box-1", "--profile", "x86-edge", "-l", "site=lab")
    cli.ok("model", "add", str(model_file), "--name", "digits", "--version", "1.0.0")
    cli.ok("model", "add", str(model_file_v2), "--name", "digits", "--version", "2.0.0")
