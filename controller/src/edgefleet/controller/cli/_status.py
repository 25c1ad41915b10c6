"""``edgefleet status`` and ``events``: the fleet and what its devices reported, as tables
that never wrap (one device or event a line, whole, for grep), CSV or JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from edgefleet.shared.errors import ConfigError

from .. import fleet, rollout
from ..home import Home
from ..registry import DeviceStatus, EventPublic
from ._app import JsonFlag, app, opened_home
from ._render import (
    Column,
    abbreviate,
    age_text,
    output_width,
    print_csv,
    print_json,
    print_lines,
    table_lines,
    zoned,
)

CsvFlag = Annotated[bool, typer.Option("--csv", help="Print CSV (a header, one record a row).")]
WideFlag = Annotated[
    bool, typer.Option("--wide", help="Every column, nothing cut (lines may exceed the width).")
]

# the default table fits 80 columns: the longer of device name and model is cut first (the
# model in the middle, keeping its version)
_STATUS = (
    Column("device", shrink=1, min_width=12),
    Column("online"),
    Column("seen", right=True),
    Column("serving", shrink=1, min_width=10, middle=True),
    Column("state"),
    Column("p95 ms", right=True),
)
_STATUS_WIDE = (
    Column("device"),
    Column("profile"),
    Column("online"),
    Column("seen", right=True),
    Column("serving"),
    Column("desired"),
    Column("state"),
    Column("deployment"),
    Column("p95 ms", right=True),
    Column("last seen"),
)
_STATUS_CSV = (
    "device", "online_state", "online", "reported_online", "age_s", "last_seen", "profile",
    "labels", "serving", "desired", "deployment_id", "serving_deployment_id", "state", "model",
    "p95_ms", "agent_version", "attention",
)  # fmt: skip
_EVENTS = (
    Column("age", right=True),
    Column("device", shrink=2, min_width=10),
    Column("deployment", shrink=3, min_width=12, middle=True),
    Column("state"),
    Column("by", shrink=4, min_width=5),
    Column("detail", shrink=5, min_width=10),
)
_EVENTS_WIDE = (
    Column("at"),
    Column("device"),
    Column("deployment"),
    Column("state"),
    Column("by"),
    Column("why"),
    Column("error"),
    Column("message"),
)
_EVENTS_CSV = (
    "id", "at", "device", "deployment_id", "state", "ok", "error_code", "message",
    "started_by", "note",
)  # fmt: skip


@app.command()
def status(
    ctx: typer.Context,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Only devices of this profile.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            metavar="KEY=VALUE",
            help="Only devices with this label; a key repeated means any of its values.",
        ),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            "-s",
            help="Only devices online, offline or stale, or whose deployment is in this "
            "state (pending, sent, in_progress, committed, failed, ...).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME[:VERSION]",
            help="Only devices serving or meant to serve this model (any version, or this one).",
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Show it again every --interval until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="With --watch: seconds between looks.", min=0.1),
    ] = 2.0,
    count: Annotated[int, typer.Option(hidden=True, help="With --watch: stop after N.")] = 0,
    wide: WideFlag = False,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Show every device: online, when last heard from, serving model, deployment state, p95.

    ONLINE is "online" only when the device's last status said so, it was heard from in
    the last 5 minutes and a daemon (`edgefleet serve`) is alive to hear its last will;
    "stale" when its "online" can no longer be trusted; "offline" when it said so (or was
    never heard from). SEEN is how long ago it last spoke (s, m, h, d). SERVING is what
    the device says it runs. STATE is that of the deployment saying what it should run
    (its newest neither superseded nor cancelled); --wide adds the profile, that desired
    model, the deployment id and the last-seen time in this host's zone.

    The table fits the terminal, or 80 columns when piped (COLUMNS overrides), one device
    a line. --json and --csv carry every field; times in them are ISO 8601 with an offset.
    --watch shows it again every --interval seconds until Ctrl-C (redrawn in place on a
    terminal); with --json, one array a line.
    """
    if as_json and as_csv:
        raise ConfigError("choose one of --json and --csv")
    if watch and as_csv:
        raise ConfigError("--watch prints tables or JSON lines, not CSV")
    labels = rollout.parse_label_selector(label or []) or None
    with opened_home(ctx) as home:

        def look() -> tuple[list[DeviceStatus], str | None]:
            now = datetime.now(UTC)
            rows = fleet.fleet_status(
                home, profile=profile, labels=labels, state=state, model=model, now=now
            )
            return rows, _daemon_warning(home, now)

        if watch:
            _watch(look, interval=interval, count=count, wide=wide, as_json=as_json)
            return
        rows, warning = look()
        if warning:
            typer.echo(f"warning: {warning}", err=True)
        if as_json:
            print_json(rows)
        elif as_csv:
            print_csv(_STATUS_CSV, (_status_record(r) for r in rows))
        else:
            print_lines(_status_table(rows, wide=wide))
            for line in _attention_lines(rows, wide=wide):
                typer.echo(line, err=True)


def _attention_lines(rows: Sequence[DeviceStatus], *, wide: bool) -> list[str]:
    """The devices a fault left for an operator, one a line: on stderr beside the table, so
    stdout stays one device a line (cut to the width unless --wide; --json has it whole)."""
    width = None if wide else output_width()
    lines = [f"attention: {r.device}: {r.attention}" for r in rows if r.attention]
    if width is not None:
        lines = [line if len(line) <= width else line[: width - 1] + "…" for line in lines]
    return lines


def _daemon_warning(home: Home, now: datetime) -> str | None:
    return daemon_warning(fleet.daemon_state(home, now=now), "online states are stale")


def daemon_warning(daemon: fleet.DaemonState, consequence: str) -> str | None:
    """What is wrong with the daemon and what follows from it (``deploy``: nothing is
    sent; ``status``: online states are stale) until it is fixed; None when nothing is."""
    if not daemon.alive:
        return f"{daemon.describe()}: {consequence} until `edgefleet serve` runs"
    if daemon.broker_connected is False:
        return f"{daemon.describe()}: {consequence} until it reaches the broker"
    return None


def _status_table(rows: Sequence[DeviceStatus], *, wide: bool) -> list[str]:
    if wide:
        cells = [
            [
                r.device, r.profile, r.online_state, age_text(r.age_s), r.serving or "-",
                r.desired or "-", r.state or "-", r.deployment_id or "-", _ms(r.p95_ms),
                zoned(r.last_seen),
            ]
            for r in rows
        ]  # fmt: skip
        return table_lines(_STATUS_WIDE, cells, None)
    cells = [
        [
            r.device, r.online_state, age_text(r.age_s), _short(r.serving), r.state or "-",
            _ms(r.p95_ms),
        ]
        for r in rows
    ]  # fmt: skip
    return table_lines(_STATUS, cells, output_width())


def _status_record(r: DeviceStatus) -> list[Any]:
    record = r.model_dump(mode="json")
    record["labels"] = " ".join(f"{k}={v}" for k, v in sorted(r.labels.items()))
    return [record[name] for name in _STATUS_CSV]


def _short(ref: str | None) -> str:
    return ref.split("/", 1)[0] if ref else "-"


def _ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _watch(
    look: Callable[[], tuple[list[DeviceStatus], str | None]],
    *,
    interval: float,
    count: int,
    wide: bool,
    as_json: bool,
) -> None:
    """A frame every ``interval`` s until Ctrl-C (or ``count`` frames): redrawn in place on
    a terminal, one after another (a blank line apart) in a pipe; --json: one array a line."""
    redraw = sys.stdout.isatty() and not as_json
    shown = 0
    try:
        while True:
            rows, warning = look()
            if as_json:
                typer.echo(json.dumps([r.model_dump(mode="json") for r in rows]))
            else:
                online = sum(r.online for r in rows)
                head = f"{zoned(datetime.now(UTC))}  {len(rows)} device(s), {online} online"
                frame = [head, *([f"warning: {warning}"] if warning else []), ""]
                frame += _status_table(rows, wide=wide) + _attention_lines(rows, wide=wide)
                typer.echo(("\x1b[H\x1b[2J" if redraw else "") + "\n".join(frame))
                if not redraw:
                    typer.echo("")
            shown += 1
            if count and shown >= count:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@app.command()
def events(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option("--device", "-d", help="Only this device.")] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest events.", min=1)] = 200,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")
    ] = False,
    wide: WideFlag = False,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Show deployment events reported by the devices, oldest first.

    AGE is how long ago the device sent it; BY is who started the rollout the event belongs
    to, and DETAIL its error, message or the rollout's reason. The table fits the terminal,
    or 80 columns when piped, one event a line; --wide shows every field whole, with times in
    this host's zone. With --follow, lines carry the time of day in UTC instead of an age;
    with --follow --json, one object a line.
    """
    if as_json and as_csv:
        raise ConfigError("choose one of --json and --csv")
    with opened_home(ctx) as home:
        if not follow:
            rows = fleet.list_events(home, device=device, limit=limit)
            if as_json:
                print_json(rows)
            elif as_csv:
                print_csv(_EVENTS_CSV, (_event_record(e) for e in rows))
            else:
                print_lines(_events_table(rows, wide=wide))
            return
        width = None if wide else output_width()
        if not as_json and not as_csv:
            typer.echo(_follow_line(("time", "device", "deployment", "state", "detail"), width))
        elif as_csv:
            print_csv(_EVENTS_CSV, [])  # the header; then a record an event
        try:
            for e in fleet.follow_events(home, device=device, limit=limit):
                if as_json:  # one object a line, for scripts
                    typer.echo(json.dumps(e.model_dump(mode="json")))
                elif as_csv:
                    print_csv(None, [_event_record(e)])
                else:
                    clock = e.at.astimezone(UTC).strftime("%H:%M:%SZ")
                    cells = (clock, e.device, e.deployment_id or "-", e.state, _detail(e))
                    typer.echo(_follow_line(cells, width))
                sys.stdout.flush()
        except KeyboardInterrupt:
            return


def _events_table(rows: Sequence[EventPublic], *, wide: bool) -> list[str]:
    if wide:
        cells = [
            [
                zoned(e.at), e.device, e.deployment_id or "-", e.state, e.started_by or "-",
                e.note or "-", e.error_code or "-", e.message or "-",
            ]
            for e in rows
        ]  # fmt: skip
        return table_lines(_EVENTS_WIDE, cells, None)
    now = datetime.now(UTC)
    cells = [
        [
            age_text((now - e.at).total_seconds()), e.device, e.deployment_id or "-", e.state,
            e.started_by or "-", _detail(e),
        ]
        for e in rows
    ]  # fmt: skip
    return table_lines(_EVENTS, cells, output_width())


def _detail(e: EventPublic) -> str:
    error = f"{e.error_code}: {e.message}" if e.error_code else e.message
    return " | ".join(part for part in (error, e.note and f"why: {e.note}") if part) or "-"


def _event_record(e: EventPublic) -> list[Any]:
    record = e.model_dump(mode="json")
    return [record[name] for name in _EVENTS_CSV]


# --follow prints each event as it comes, so its columns have fixed widths: the time of day
# (UTC, marked Z), device, deployment id (cut in the middle), state; the detail takes the rest
_FOLLOW_WIDTHS = (9, 16, 22, 11)


def _follow_line(cells: Sequence[str], width: int | None) -> str:
    *fixed, detail = cells
    parts = [
        cell.ljust(size) if width is None else abbreviate(cell, size, middle=i == 2).ljust(size)
        for i, (cell, size) in enumerate(zip(fixed, _FOLLOW_WIDTHS, strict=True))
    ]
    if width is not None:
        detail = abbreviate(detail, max(width - sum(_FOLLOW_WIDTHS) - 2 * len(parts), 8))
    return "  ".join([*parts, detail]).rstrip()
