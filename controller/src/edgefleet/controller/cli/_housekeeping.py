"""``edgefleet artifacts gc`` and ``edgefleet telemetry prune``: what the registry and the
artifact store no longer need."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from .. import catalog, fleet
from ._app import JsonFlag, app, opened_home
from ._render import print_json, size_text, when

artifacts_app = typer.Typer(
    help="The artifact store: collect the files nothing needs any more.", no_args_is_help=True
)
telemetry_app = typer.Typer(
    help="Telemetry retention: raw rows for telemetry_raw_days, then hourly ones.",
    no_args_is_help=True,
)
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(telemetry_app, name="telemetry")


@artifacts_app.command("gc")
def artifacts_gc(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would go, delete nothing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete artifact rows no variant uses, and store files that no artifact row or
    unexpired benchmark grant names (files younger than an hour are kept: an upload may be
    about to commit its row)."""
    with opened_home(ctx) as home:
        report = catalog.collect_garbage(home, dry_run=dry_run)
    if as_json:
        print_json(asdict(report))
        return
    verb = "would free" if dry_run else "freed"
    for item in report.files:
        typer.echo(
            f"{'would delete' if dry_run else 'deleted'} {item.path} ({size_text(item.size)})"
        )
    typer.echo(
        f"{verb} {size_text(report.bytes_freed)}: {len(report.files)} file(s), "
        f"{len(report.artifact_rows)} artifact row(s); {report.kept_files} file(s) kept"
    )


@telemetry_app.command("prune")
def telemetry_prune(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Apply telemetry retention now (`edgefleet serve` does it every hour): raw rows older
    than telemetry_raw_days (default 7) become one row per device, model and hour, with
    merged histograms and exact request and error counts; rows older than
    telemetry_keep_days (default 90) are deleted. Both are settings in config.toml."""
    with opened_home(ctx) as home:
        report = fleet.prune_telemetry(home)
    if as_json:
        print_json(asdict(report))
        return
    raw = f"before {when(report.raw_before)}" if report.raw_before else "(merging is off)"
    keep = f"before {when(report.keep_after)}" if report.keep_after else "(kept for ever)"
    typer.echo(
        f"merged {report.merged_rows} raw row(s) {raw} into {report.hourly_rows} hourly "
        f"row(s); deleted {report.expired_rows} row(s) {keep}; {report.devices} device(s), "
        f"{report.elapsed_s:.1f} s"
    )
