"""Rendering in one place: tables, JSON, sizes and times, progress bars, the candidates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from ..registry import DevicePublic, ModelVersionPublic


def print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    typer.echo(json.dumps(value, indent=2, sort_keys=False))


def console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def new_table(*headers: str, **kw: Any) -> Table:
    """A table whose first column (a name people copy) never wraps or truncates."""
    table = Table(**kw)
    for i, header in enumerate(headers):
        table.add_column(header, no_wrap=i == 0, overflow="fold")
    return table


def device_details(d: DevicePublic) -> Table:
    table = Table(show_header=False, box=None)
    for key, value in (
        ("device", d.name),
        ("profile", d.profile),
        ("labels", labels_text(d.labels)),
        ("enrolled", when(d.created_at)),
        ("online", yes_no(d.online)),
        ("last seen", when(d.last_seen)),
        ("agent", d.agent_version or "-"),
        ("sequence", str(d.last_sequence)),
    ):
        table.add_row(key, value)
    return table


def labels_text(labels: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def shape_text(shape: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def io_text(version: ModelVersionPublic, kind: str) -> str:
    return ", ".join(f"{s.name}{shape_text(s.shape)}" for s in getattr(version.io, kind))


@contextmanager
def progress_bars() -> Iterator[Any]:
    """A progress callback drawing one rich bar per stage on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bars = Progress(
        TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
        console=Console(stderr=True), transient=False,
    )  # fmt: skip
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    with bars:
        yield update


def candidates_table(report: Any) -> Table:  # compress.CompressionReport
    reference = report.reference
    title = f"{report.profile}: objective {report.objective}"
    where = ""
    if report.measured_on:
        title += f", latency measured on {report.measured_on}"
        where = f"{report.measured_on} "
    # p95 and the recipes are in --json and --report: the table has to fit 80 columns
    table = Table(
        title=title, title_justify="left",
        caption="p95 latency and recipes: see --json or --report", caption_justify="left",
    )  # fmt: skip
    table.add_column("candidate", no_wrap=True)
    for header in ("smaller", "faster", f"{report.metric} Δ", f"{where}p50 ms"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("budget", overflow="fold")
    for c in report.candidates:
        chosen = c.name == report.chosen.name
        status = "[bold green]chosen[/]" if chosen else "; ".join(b.text for b in c.breaches)
        table.add_row(
            c.name, ratio(reference.size_bytes, c.size_bytes),
            ratio(reference.latency_ms_p50, c.latency_ms_p50),
            f"{c.metric - reference.metric:+.4f}", f"{c.latency_ms_p50:.3f}", status or "fits",
        )  # fmt: skip
    for item in report.skipped:
        table.add_row(item["candidate"], "", "", "", "", f"skipped: {item['why']}")
    return table


def ratio(reference: float, candidate: float) -> str:
    return f"{reference / candidate:.2f}x" if candidate > 0 else "-"
