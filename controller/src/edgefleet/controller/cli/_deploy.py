"""``edgefleet deploy``, ``status`` and ``events``: sending a version and watching the fleet."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .. import fleet, rollout
from ..registry import DeploymentPublic, DeploymentState
from ._app import EXIT_FAILURE, JsonFlag, app, opened_home
from ._render import console, new_table, print_json, when, yes_no


@app.command()
def deploy(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION of the model, e.g. digits:1.0.0.")],
    device: Annotated[
        list[str] | None,
        typer.Option("--device", "-d", help="A target device; repeat for more."),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Every device of this profile.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", help="Every device with this key=value label; repeatable."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow progress until every target is done.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --wait: give up after this many seconds.", min=0)
    ] = 600.0,
    reason: Annotated[
        str, typer.Option("--reason", help="Why: recorded with your user name.")
    ] = "",
    as_json: JsonFlag = False,
) -> None:
    """Record a deployment of a model version to devices; `edgefleet serve` sends it.

    A deploy is a rollout of one wave without gates (`edgefleet rollout start` stages one).
    With --wait the exit code is 0 only if every target committed.
    """
    labels = fleet.parse_labels(label or []) or None
    with opened_home(ctx) as home:
        rows = rollout.deploy(
            home, ref, devices=device or None, profile=profile, labels=labels,
            started_by=rollout.operator_name(), note=reason,
        )  # fmt: skip
        if wait:
            rows = rollout.wait_for_deployment(
                home,
                rows[0].deployment_id,
                timeout_s=timeout,
                on_change=None if as_json else _print_progress,
            )
    if as_json:
        print_json(rows)
    else:
        typer.echo(f"deployment {rows[0].deployment_id}: {len(rows)} device(s)")
        for row in rows:
            error = f"  {row.error_code}: {row.error_message}" if row.error_code else ""
            typer.echo(f"  {row.device:<24} {row.profile:<10} {row.model:<28} {row.state}{error}")
    if wait and any(r.state != DeploymentState.COMMITTED.value for r in rows):
        if not as_json:
            typer.echo("error: not every target committed", err=True)
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show every device: online, model, deployment state, last p95 latency, last seen."""
    with opened_home(ctx) as home:
        rows = fleet.fleet_status(home)
    if as_json:
        print_json(rows)
        return
    grid = new_table("device", "online", "profile", "model", "state", "p95", "last seen")
    for r in rows:
        grid.add_row(
            r.device, yes_no(r.online), r.profile, r.model or "-", r.state or "-",
            f"{r.p95_ms:.2f} ms" if r.p95_ms is not None else "-", when(r.last_seen),
        )  # fmt: skip
    console().print(grid)


@app.command()
def events(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option("--device", "-d", help="Only this device.")] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest events.", min=1)] = 200,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show deployment events reported by the devices, oldest first."""
    with opened_home(ctx) as home:
        if not follow:
            rows = fleet.list_events(home, device=device, limit=limit)
            if as_json:
                print_json(rows)
                return
            grid = new_table("at", "device", "deployment", "state", "error", "message")
            for e in rows:
                grid.add_row(
                    when(e.at), e.device, e.deployment_id or "-", e.state,
                    e.error_code or "-", e.message,
                )  # fmt: skip
            console().print(grid)
            return
        try:
            for e in fleet.follow_events(home, device=device, limit=limit):
                if as_json:  # one object a line, for scripts
                    typer.echo(json.dumps(e.model_dump(mode="json")))
                else:
                    error = f" {e.error_code}: {e.message}" if e.error_code else ""
                    typer.echo(
                        f"{when(e.at)}  {e.device:<20} {e.deployment_id or '-':<28} "
                        f"{e.state}{error}"
                    )
        except KeyboardInterrupt:
            return


def _print_progress(row: DeploymentPublic) -> None:
    typer.echo(f"{row.device}: {row.state}", err=True)
