"""``edgefleet model ...``: add, list, show and remove model versions."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from .. import catalog
from ._app import JsonFlag, model_app, opened_home
from ._render import console, io_text, new_table, print_json, shape_text, size_text, when

ModelRef = Annotated[
    str, typer.Argument(metavar="NAME:VERSION", help="The model version, e.g. digits:1.0.0.")
]


@model_app.command("add")
def model_add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The ONNX model file.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name, e.g. digits.")],
    version: Annotated[str, typer.Option("--version", "-v", help="Version, e.g. 1.0.0.")],
    sample: Annotated[
        Path | None,
        typer.Option(
            metavar="NPZ",
            help="An .npz whose first array (or arrays named after the inputs) gives the "
            "smoke-test sample; without it one is generated from the input signature.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a model version: check it loads, store it, record its signature and smoke test."""
    with opened_home(ctx) as home:
        added = catalog.add_model(home, file, name=name, version=version, sample=sample)
    if as_json:
        print_json(added)
        return
    base = added.variants[0]
    typer.echo(f"added {added.ref}: {base.size} bytes, sha256 {base.sha256[:12]}")


@model_app.command("list")
def model_list(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Only versions of this model.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List model versions."""
    with opened_home(ctx) as home:
        versions = catalog.list_models(home, name=name)
    if as_json:
        print_json(versions)
        return
    table = new_table("model", "version", "variants", "size", "inputs", "added")
    for v in versions:
        table.add_row(
            v.name, v.version, ", ".join(x.name for x in v.variants),
            size_text(v.variants[0].size if v.variants else 0), io_text(v, "inputs"),
            when(v.created_at),
        )  # fmt: skip
    console().print(table)


@model_app.command("show")
def model_show(
    ctx: typer.Context,
    ref: ModelRef,
    as_json: JsonFlag = False,
) -> None:
    """Show one model version: signature, smoke test and variants."""
    with opened_home(ctx) as home:
        version = catalog.get_model_version(home, ref)
    if as_json:
        print_json(version)
        return
    out = console()
    out.print(
        f"[bold]{version.ref}[/]  added {when(version.created_at)} from {version.source_name}"
    )
    io = new_table("", "tensor", "dtype", "shape", title="signature", title_justify="left")
    for kind in ("inputs", "outputs"):
        for spec in getattr(version.io, kind):
            io.add_row(kind[:-1], spec.name, spec.dtype, shape_text(spec.shape))
    out.print(io)
    smoke = ", ".join(f"{k} {shape_text(t.shape)}" for k, t in version.smoke_test.inputs.items())
    out.print(
        f"smoke test: {smoke} (rtol {version.smoke_test.rtol}, atol {version.smoke_test.atol})"
    )
    out.print("variants:")
    for v in version.variants:  # lines, not a table: the digest must stay copyable
        out.print(
            f"  {v.name:<10} {v.profile or 'any':<10} {size_text(v.size):>9}  sha256:{v.sha256}",
            soft_wrap=True,
        )


@model_app.command("remove")
def model_remove(
    ctx: typer.Context,
    ref: ModelRef,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove a model version: its variants, the files no other version uses, and its
    finished deployment rows and rollouts.

    Refused, naming the devices and rollouts, while a device serves it,
    a device would roll back to it, an unfinished deployment needs it
    or a rollout of it is active. Events and telemetry stay.
    `edgefleet artifacts gc` collects anything left behind.
    """
    if not yes:
        typer.confirm(f"remove {ref} with its deployment history?", abort=True)
    with opened_home(ctx) as home:
        removed = catalog.remove_model_version(home, ref)
    if as_json:
        print_json(asdict(removed))
        return
    history = f"{removed.deployment_rows} deployment row(s), {len(removed.rollouts)} rollout(s)"
    last = "; it was the model's last version" if removed.model_removed else ""
    typer.echo(
        f"removed {removed.ref}: variant(s) {', '.join(removed.variants)}, {history}; "
        f"{removed.files_deleted} file(s), {size_text(removed.bytes_freed)} freed{last}"
    )
