"""``edgefleet upgrade`` and ``edgefleet completion``: the registry's schema, and the shell."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

import typer
from typer.completion import get_completion_script

from ..home import upgrade_home
from ._app import JsonFlag, app, settings_of
from ._render import console, print_json


@app.command()
def upgrade(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Bring the registry's schema up to this edgefleet's, and say which migrations ran.

    Only `init` and `upgrade` change the schema; every other command
    refuses a registry at an older schema and names this command.
    Stop `edgefleet serve` first.
    """
    report = upgrade_home(settings_of(ctx))
    if as_json:
        print_json(asdict(report))
        return
    out = console()
    if not report.applied:
        out.print(f"{report.database} is at schema {report.to_version}: nothing to do")
        return
    out.print(
        f"upgraded {report.database} from schema {report.from_version} to {report.to_version}:"
    )
    for step in report.applied:
        out.print(f"  {step.version:>3}  {step.description}")


Shell = Literal["bash", "zsh", "fish"]


@app.command()
def completion(
    shell: Annotated[Shell, typer.Argument(help="The shell: bash, zsh or fish.")],
) -> None:
    """Print the completion script for bash, zsh or fish: no terminal, no guessing.

    Load it from your shell's start-up file, e.g.
    `source <(edgefleet completion bash)` in ~/.bashrc, or write it where
    the shell looks for completions; `edgefleet --install-completion`
    does that for the shell it runs in.
    """
    typer.echo(
        get_completion_script(
            prog_name="edgefleet", complete_var="_EDGEFLEET_COMPLETE", shell=shell
        )
    )
