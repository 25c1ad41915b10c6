"""Rendering in one place: tables, JSON, CSV, sizes, times and ages, progress bars, the
candidates; and plain tables that never wrap, for what operators pipe into grep."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
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


# -- plain tables that never wrap ------------------------------------------------------
# One row a line whatever the width, so `edgefleet status | grep pi-a` shows the whole row:
# cells are cut (with an ellipsis) rather than wrapped, the most expendable columns first.

ELLIPSIS = "…"
PIPE_WIDTH = 80  # what a line may take when stdout is not a terminal and COLUMNS is unset


@dataclass(frozen=True)
class Column:
    """A column of a plain table. ``shrink``: 0 never cut, else cut in decreasing order of
    it down to ``min_width``; ``middle``: cut in the middle (ids: their head and tail tell
    them apart)."""

    header: str
    shrink: int = 0
    min_width: int = 6
    right: bool = False
    middle: bool = False


def output_width() -> int:
    """COLUMNS when set, else the terminal's width, else PIPE_WIDTH (a pipe or a file)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    if sys.stdout.isatty():
        try:
            return os.get_terminal_size(sys.stdout.fileno()).columns
        except (OSError, ValueError):
            pass
    return PIPE_WIDTH


def abbreviate(text: str, width: int, *, middle: bool = False) -> str:
    """``text`` in at most ``width`` characters, an ellipsis where it was cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    if not middle:
        return text[: width - 1] + ELLIPSIS
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + ELLIPSIS + text[len(text) - tail :]


def table_lines(
    columns: Sequence[Column], rows: Iterable[Sequence[str]], width: int | None
) -> list[str]:
    """The header and one line per row, columns two spaces apart, no line longer than
    ``width`` (None: no limit) unless the columns' minimum widths alone exceed it."""
    body = [list(r) for r in rows]
    widths = [max([len(c.header), *(len(r[i]) for r in body)]) for i, c in enumerate(columns)]
    excess = sum(widths) + 2 * (len(columns) - 1) - (width if width is not None else sys.maxsize)
    for level in sorted({c.shrink for c in columns if c.shrink}, reverse=True):
        # within a level, the widest column gives a character back first
        while excess > 0:
            room = [
                (widths[i], i)
                for i, c in enumerate(columns)
                if c.shrink == level and widths[i] > c.min_width
            ]
            if not room:
                break
            widths[max(room)[1]] -= 1
            excess -= 1
    lines = []
    for cells in [[c.header for c in columns], *body]:
        parts = []
        for i, (column, cell) in enumerate(zip(columns, cells, strict=True)):
            cell = abbreviate(cell, widths[i], middle=column.middle)
            last = i == len(columns) - 1
            parts.append(
                cell.rjust(widths[i]) if column.right else cell if last else cell.ljust(widths[i])
            )
        lines.append("  ".join(parts).rstrip())
    return lines


def print_lines(lines: Iterable[str]) -> None:
    typer.echo("\n".join(lines))


def print_csv(header: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> None:
    """RFC 4180 CSV on stdout: the header (unless None), then one record a row; a None
    value is an empty field."""
    out = csv.writer(sys.stdout, lineterminator="\n")
    if header is not None:
        out.writerow(header)
    for row in rows:
        out.writerow(["" if v is None else v for v in row])


def age_text(seconds: float | None) -> str:
    """How long ago, in its largest whole unit: 12s, 5m, 3h, 2d; "-" for never."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def zoned(value: datetime | None) -> str:
    """A time in this host's zone, the zone named: 2024-05-01 14:03:04 CEST."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"
