"""``edgefleet init`` and ``edgefleet profile ...``: the home folder and the device profiles."""

from __future__ import annotations

from typing import Annotated

import typer

from ..home import available_profiles, get_profile, init_home
from ._app import JsonFlag, app, profile_app, settings_of
from ._render import console, new_table, print_json, size_text


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the home folder, config, Ed25519 signing key and registry, or update them."""
    report = init_home(settings_of(ctx))
    out = console()
    for path in report.created:
        out.print(f"created  {path}")
    if report.migrations_applied:
        versions = ", ".join(str(v) for v in report.migrations_applied)
        out.print(f"migrated {report.database} (schema {versions})")
    out.print(f"home     {report.home}")
    out.print(f"database {report.database}")
    out.print(f"key id   {report.key_id}")
    settings = settings_of(ctx)
    out.print(
        f"fleet page http://{settings.http_host}:{settings.http_port}/ while `edgefleet serve` "
        f"runs; log in with operator_token from {settings.config_path}"
    )


@profile_app.command("list")
def profile_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the device profiles (built in, and from the home folder's profiles/)."""
    profiles = list(available_profiles(settings_of(ctx)).values())
    if as_json:
        print_json(profiles)
        return
    table = new_table(
        "profile", "arch", "isa", "cores", "RAM", "threads", "max size", "max latency"
    )
    for p in profiles:
        table.add_row(
            p.name, p.arch, " ".join(p.isa_features), str(p.cores), f"{p.ram_mb} MB",
            str(p.runtime.intra_op_threads or "auto"), size_text(p.budgets.max_size_bytes),
            f"{p.budgets.max_latency_ms:g} ms",
        )  # fmt: skip
    console().print(table)


@profile_app.command("show")
def profile_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The profile name, e.g. rpi4.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one device profile in full."""
    profile = get_profile(available_profiles(settings_of(ctx)), name)
    if as_json:
        print_json(profile)
        return
    out = console()
    out.print(f"[bold]{profile.name}[/]  {profile.description}  ({profile.source})")
    for key, value in profile.model_dump(mode="json", exclude={"name", "description"}).items():
        out.print(f"  {key}: {value}")
