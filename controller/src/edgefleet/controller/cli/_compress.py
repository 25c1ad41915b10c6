"""``edgefleet compress``: candidates measured against fp32, the best recorded as a variant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app, opened_home
from ._render import candidates_table, console, print_json, progress_bars, size_text


@app.command()
def compress(
    ctx: typer.Context,
    ref: Annotated[
        str,
        typer.Argument(metavar="NAME:VERSION", help="The model version, e.g. digits:1.0.0."),
    ],
    profile: Annotated[
        str, typer.Option("--profile", "-p", help="The device profile to compress for.")
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="An .npz with one array per model input, named after it and batch first "
            "('inputs' for a one-input model), and 'labels' for top1; part of the rows "
            "calibrates, the rest evaluates.",
        ),
    ],
    metric: Annotated[
        str, typer.Option(help="How outputs are compared with fp32: top1, mse or cosine.")
    ] = "top1",
    max_drop: Annotated[
        float | None,
        typer.Option(help="The largest metric drop allowed; the profile's budget by default."),
    ] = None,
    max_worst_drop: Annotated[
        float | None,
        typer.Option(
            help="The largest drop allowed on the worst evaluation row (cosine, mse): one "
            "badly wrong embedding; the profile's budget by default.",
        ),
    ] = None,
    torch_source: Annotated[
        str | None,
        typer.Option(
            "--torch",
            help="The PyTorch model, for pruning and distillation: a TorchScript file "
            "or module:function returning an nn.Module.",
        ),
    ] = None,
    torch_state: Annotated[
        Path | None,
        typer.Option("--torch-state", help="A state-dict file for the module:function model."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the full report here as JSON.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the data split and training.")] = 0,
    latency_runs: Annotated[
        int, typer.Option(help="Timed runs per candidate for the latency figures.", min=1)
    ] = 100,
    measure_on: Annotated[
        str | None,
        typer.Option(
            "--measure-on",
            metavar="DEVICE",
            help="Take latency from this device (online, of the profile) instead of this "
            "machine: it benchmarks every candidate, served by `edgefleet serve`.",
        ),
    ] = None,
    measure_timeout: Annotated[
        float,
        typer.Option(
            "--measure-timeout",
            metavar="S",
            help="Seconds to wait for the device's result on each candidate.",
            min=0.1,
        ),
    ] = 120.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of a table.")
    ] = False,
) -> None:
    """Compress a model version for a profile, choosing the variant by measurement.

    Every pass the profile allows makes candidates; each is measured against fp32 (metric on
    held-out data, size, latency side by side). The best inside the profile's budget, by its
    objective, is recorded as the version's variant for that profile, and `deploy` sends it
    to that profile's devices. Exits 1, listing the closest candidates, when none fits.
    With --measure-on, the latency that decides is measured on that device.
    """
    from ..catalog import compress_model_version

    with opened_home(ctx) as home, progress_bars() as progress:
        result = compress_model_version(
            home, ref, profile, data, metric=metric, max_drop=max_drop,
            max_worst_drop=max_worst_drop,
            torch_source=torch_source, torch_state=torch_state, report_path=report,
            seed=seed, latency_runs=latency_runs, progress=progress, measure_on=measure_on,
            measure_timeout_s=measure_timeout,
        )  # fmt: skip
    if as_json:
        print_json(result.to_dict())
        return
    out = console()
    out.print(candidates_table(result.report))
    chosen = result.report.chosen
    out.print(
        f"recorded {result.ref}/{result.variant.name} for {profile}: {chosen.name}, "
        f"{size_text(result.variant.size)}, sha256 {result.variant.sha256[:12]}"
    )
