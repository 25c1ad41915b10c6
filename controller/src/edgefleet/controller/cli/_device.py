"""``edgefleet device ...`` (one device, or a CSV file's worth with ``--from``) and
``edgefleet broker config``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.shared.errors import ConfigError

from .. import fleet
from ..registry import DeviceCreate
from ._app import JsonFlag, broker_app, device_app, opened_home
from ._render import (
    console,
    device_details,
    labels_text,
    new_table,
    print_json,
    progress_bars,
    when,
    yes_no,
)


@device_app.command("add")
def device_add(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(help="Device id: letters, digits, '.', '_' or '-'. Omit with --from."),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile", "-p", help="Device profile, e.g. rpi4; with --from, for lines without one."
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            metavar="KEY=VALUE",
            help="A key=value label; repeat for more. With --from, every line gets them.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="Write the agent config here (mode 0600); without it, print it on stdout.",
        ),
    ] = None,
    state_dir: Annotated[
        str,
        typer.Option(
            metavar="DIR",
            help="The agent's state folder on the device; with --from, for lines without one.",
        ),
    ] = fleet.DEFAULT_STATE_DIR,
    from_csv: Annotated[
        Path | None,
        typer.Option(
            "--from",
            metavar="CSV",
            help="Enrol every device in this CSV file: a header line naming the columns "
            "name, profile, labels (k=v;k2=v2) and state_dir, then one line per device.",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="With --from: write each agent config to DIR/NAME.toml (0600)."
        ),
    ] = None,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            help="With --from: leave devices already enrolled alone, enrol the rest.",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Enrol a device and produce its agent config with fresh credentials; or, with --from,
    every device in a CSV file.

    With --json: the device, and its agent config as "agent_config" unless --out wrote it
    to a file ("written_to").

    With --from, every line is checked first and all bad ones are reported with their line
    numbers; nothing is enrolled unless all are good. Then all are enrolled at once and
    each one's config is written to --out-dir. --json prints the devices, each with the
    file written ("written_to"), and the names skipped.
    """
    labels = fleet.parse_labels(label or [])
    if from_csv is not None:
        if name is not None or out is not None:
            raise ConfigError("--from enrols the devices in the file: give no NAME and no --out")
        if out_dir is None:
            raise ConfigError("--from needs --out-dir DIR, the folder for the agent configs")
        _add_from_csv(ctx, from_csv, out_dir, profile, labels, state_dir, skip_existing, as_json)
        return
    if out_dir is not None or skip_existing:
        raise ConfigError("--out-dir and --skip-existing go with --from CSV")
    if name is None or profile is None:
        raise ConfigError(
            "device add needs a NAME and --profile (or --from CSV to enrol many devices)"
        )
    new = DeviceCreate(name=name, profile=profile, labels=labels)
    with opened_home(ctx) as home:
        enrolled = fleet.add_device(home, new, out=out, state_dir=state_dir)
    if as_json:
        print_json(
            {
                "device": enrolled.device.model_dump(mode="json"),
                "agent_config": enrolled.agent_config if out is None else None,
                "written_to": str(out) if out is not None else None,
            }
        )
        if out is None:
            typer.echo(
                "note: agent_config holds the device's credentials; keep it private", err=True
            )
        return
    if out is None:
        typer.echo(enrolled.agent_config, nl=False)
        typer.echo("note: this config holds the device's credentials; keep it private", err=True)
    else:
        typer.echo(f"enrolled {name} ({profile}); agent config written to {out} (mode 0600)")


def _add_from_csv(
    ctx: typer.Context,
    path: Path,
    out_dir: Path,
    profile: str | None,
    labels: dict[str, str],
    state_dir: str,
    skip_existing: bool,
    as_json: bool,
) -> None:
    with opened_home(ctx) as home, _progress() as progress:
        done = fleet.enrol_from_csv(
            home, path, out_dir, profile=profile, labels=labels, state_dir=state_dir,
            skip_existing=skip_existing, progress=progress,
        )  # fmt: skip
    if as_json:
        print_json(
            {
                "enrolled": [
                    d.model_dump(mode="json") | {"written_to": str(done.config_path(d.name))}
                    for d in done.enrolled
                ],
                "skipped": done.skipped,
                "out_dir": str(out_dir),
            }
        )
        return
    n = len(done.enrolled)
    typer.echo(
        f"enrolled {n} device{'' if n == 1 else 's'} from {path.name}; agent configs "
        f"written to {out_dir}/NAME.toml (mode 0600)"
    )
    if done.skipped:
        typer.echo(f"skipped {len(done.skipped)} already enrolled: {', '.join(done.skipped)}")
    if n:
        typer.echo(
            "next: `edgefleet broker config --out DIR` once, and reload Mosquitto, so they "
            "can log in"
        )


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None] | None]:
    """A bar on stderr when someone watches it; scripts get none."""
    if not sys.stderr.isatty():
        yield None
        return
    with progress_bars() as update:
        yield update


@device_app.command("list")
def device_list(
    ctx: typer.Context,
    profile: Annotated[str | None, typer.Option(help="Only devices of this profile.")] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", metavar="KEY=VALUE", help="Only devices with key=value."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List enrolled devices."""
    with opened_home(ctx) as home:
        devices = fleet.list_devices(home, profile=profile, labels=fleet.parse_labels(label or []))
    if as_json:
        print_json(devices)
        return
    table = new_table("device", "profile", "labels", "online", "last seen", "agent")
    for d in devices:
        table.add_row(
            d.name, d.profile, labels_text(d.labels), yes_no(d.online), when(d.last_seen),
            d.agent_version or "-",
        )  # fmt: skip
    console().print(table)


@device_app.command("show")
def device_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The device id.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one device."""
    with opened_home(ctx) as home:
        device = fleet.get_device(home, name)
    if as_json:
        print_json(device)
        return
    console().print(device_details(device))


@device_app.command("remove")
def device_remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The device id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a device with its deployments, events and telemetry; its credentials stop working."""
    if not yes:
        typer.confirm(f"remove device {name} and its history?", abort=True)
    with opened_home(ctx) as home:
        fleet.remove_device(home, name)
    typer.echo(f"removed {name}")


@broker_app.command("config")
def broker_config(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for passwd, acl and edgefleet.conf.")
    ],
    bind: Annotated[
        str | None,
        typer.Option(
            "--bind",
            metavar="ADDRESS",
            help="The listener's address; by default broker_url's host when that is an IP "
            "address, every interface otherwise.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write Mosquitto's password file and ACL: every device may read only its command topic
    and write only its own status, events and telemetry; the controller (the user in
    broker_url) may do everything under the topic prefix; nobody else gets in. The file
    edgefleet.conf also defines the listener of broker_url's port, where a client's id is
    its user name, so no client can take over another's session.

    Run again after `device add` or `device remove`, then reload Mosquitto (SIGHUP).
    """
    with opened_home(ctx) as home:
        written = fleet.write_broker_config(home, out, bind=bind)
    if as_json:
        print_json({k: v if isinstance(v, int) else str(v) for k, v in vars(written).items()})
        return
    out_ = console()
    who = f"controller {written.controller_user!r} and {written.devices} device(s)"
    out_.print(f"wrote {written.password_file} ({who}), {written.acl_file}, {written.conf_file}")
    out_.print(
        f"use it: `include_dir {written.folder}` in mosquitto.conf (or copy edgefleet.conf "
        "into /etc/mosquitto/conf.d/); the mosquitto user must be able to read the folder "
        "and the files (mode 0640, group mosquitto when it exists); edgefleet.conf defines "
        f"the listener `{written.listener}`, so mosquitto.conf must not define that port "
        "again; restart Mosquitto the first time, then reload it with SIGHUP"
    )
