"""``edgefleet deploy``: record a version for devices, say at once what stands in its way (no
daemon, targets offline), and with --wait follow it live until every target is done."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Annotated

import typer

from .. import fleet, rollout
from ..home import Home
from ..registry import FINISHED_STATES, DeploymentPublic, DeploymentState
from ._app import EXIT_FAILURE, JsonFlag, app, opened_home
from ._render import Column, age_text, output_width, print_json, print_lines, table_lines
from ._rollout import EXIT_IN_PROGRESS
from ._status import daemon_warning

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
# --wait's default timeout: a device downloads, verifies, loads, smoke-tests and benchmarks
# in a minute or two, and the fleet's downloads share the artifact server's bandwidth
WAIT_BASE_S = 120.0
WAIT_PER_TARGET_S = 2.0
_NAMED = 10  # offline targets named in the warning; the rest are counted


def wait_timeout(targets: int) -> float:
    return WAIT_BASE_S + WAIT_PER_TARGET_S * targets


@app.command()
def deploy(
    ctx: typer.Context,
    ref: Annotated[
        str,
        typer.Argument(metavar="NAME:VERSION", help="The model version, e.g. digits:1.0.0."),
    ],
    device: Annotated[
        list[str] | None,
        typer.Option("--device", "-d", help="A target device; repeat for more."),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Every device of this profile.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            metavar="KEY=VALUE",
            help="Every device with this label; a key repeated means any of its values, "
            "different keys and --profile must all match.",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow progress until every target is done.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="With --wait: give up after this many seconds "
            "[default: 120 + 2 per target, e.g. 320 for 100 devices].",
            min=0,
            show_default=False,
        ),
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Why: recorded with your user name.")
    ] = "",
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Send a variant even when it is over its profile's size budget."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Record a deployment of a model version to devices; `edgefleet serve` sends it.

    A deploy is a rollout of one wave without gates (`edgefleet rollout start` stages one).
    The deployment id comes first (on stderr with --json); a warning follows when no
    daemon is alive (nothing is sent until `edgefleet serve` runs) or a target is offline
    (its order is queued until it returns).

    --wait shows progress on stderr (devices per state, time elapsed) and returns as soon
    as every target has finished. Exit code with --wait: 0 every target committed, 1 one
    did not, 3 still unfinished at the timeout, 130 interrupted (the deployment carries on:
    `edgefleet rollout status ID` follows it).
    """
    labels = rollout.parse_label_selector(label or []) or None
    with opened_home(ctx) as home:
        rows = rollout.deploy(
            home, ref, devices=device or None, profile=profile, labels=labels,
            started_by=rollout.operator_name(), note=reason, force=force,
        )  # fmt: skip
        dep_id = rows[0].deployment_id
        typer.echo(f"deployment {dep_id}: {len(rows)} device(s)", err=as_json)
        alive = _warn_unreachable(home, rows, profile=profile, labels=labels)
        if wait:
            limit = timeout if timeout is not None else wait_timeout(len(rows))
            progress = _Progress(dep_id)
            try:
                rows = rollout.wait_for_deployment(
                    home, dep_id, timeout_s=limit, on_progress=progress.show
                )
            except KeyboardInterrupt:
                progress.end()
                typer.echo(
                    f"interrupted: deployment {dep_id} carries on; "
                    f"follow it with `edgefleet rollout status {dep_id}`",
                    err=True,
                )
                raise typer.Exit(EXIT_INTERRUPTED) from None
            progress.end()
    if as_json:
        print_json(rows)
    else:
        print_lines(_rows_table(rows))
    if not wait:
        return
    unfinished = [r for r in rows if r.state not in FINISHED_STATES]
    if unfinished:
        why = (
            "nothing is sent until `edgefleet serve` runs"
            if not alive
            else f"follow it with `edgefleet rollout status {dep_id}`"
        )
        typer.echo(
            f"error: timed out after {limit:.0f} s: {len(unfinished)} of {len(rows)} "
            f"target(s) unfinished ({_counts(unfinished)}); {why}",
            err=True,
        )
        raise typer.Exit(EXIT_IN_PROGRESS)
    if any(r.state != DeploymentState.COMMITTED.value for r in rows):
        typer.echo(f"error: not every target committed ({_counts(rows)})", err=True)
        raise typer.Exit(EXIT_FAILURE)


def _warn_unreachable(
    home: Home,
    rows: Sequence[DeploymentPublic],
    *,
    profile: str | None,
    labels: dict[str, list[str]] | None,
) -> bool:
    """Say on stderr what keeps the orders from going out; whether a daemon is alive."""
    daemon = fleet.daemon_state(home)
    trouble = daemon_warning(daemon, "nothing is sent")
    if trouble:
        typer.echo(f"warning: {trouble}", err=True)
    targets = {r.device for r in rows}
    # with no daemon hearing the broker, a device last heard of as online may be anything
    # now ("stale"): name only those known to be away
    hearing = trouble is None
    away = [
        s
        for s in fleet.fleet_status(home, profile=profile, labels=labels)  # the targets' kind
        if s.device in targets
        and (s.online_state != "online" if hearing else s.online_state == "offline")
    ]
    if away:
        named = ", ".join(
            f"{s.device} ({s.online_state}, "
            + (f"seen {age_text(s.age_s)} ago)" if s.age_s is not None else "never seen)")
            for s in away[:_NAMED]
        )
        more = f" and {len(away) - _NAMED} more" if len(away) > _NAMED else ""
        typer.echo(
            f"warning: {len(away)} of {len(rows)} target(s) offline, queued until they "
            f"return: {named}{more}",
            err=True,
        )
    return daemon.alive


class _Progress:
    """One line on stderr: devices per state and the time elapsed. Redrawn in place on a
    terminal; in a log, a new line when the counts change (at most one every 2 s)."""

    def __init__(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        self.terminal = sys.stderr.isatty()
        self.last = ""
        self.printed_at = -1e9
        self.drawn = False

    def show(self, rows: list[DeploymentPublic], elapsed_s: float) -> None:
        done = sum(r.state in FINISHED_STATES for r in rows)
        counts = f"{done}/{len(rows)} finished: {_counts(rows)}"
        line = f"{self.deployment_id}  {counts}  {age_text(elapsed_s)}"
        if self.terminal:
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()
            self.drawn = True
            return
        finished = done == len(rows)
        now = time.monotonic()
        if counts != self.last and (finished or now - self.printed_at >= 2.0 or not self.last):
            typer.echo(line, err=True)
            self.last, self.printed_at = counts, now

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False


def _counts(rows: Sequence[DeploymentPublic]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(Counter(r.state for r in rows).items()))


_ROWS = (
    Column("device", shrink=1, min_width=12),
    Column("profile", shrink=2, min_width=8),
    Column("model", shrink=1, min_width=12, middle=True),
    Column("state"),
    Column("error", shrink=3, min_width=10),
)


def _rows_table(rows: Sequence[DeploymentPublic]) -> list[str]:
    """One line a target; the error column only when one has an error."""
    errors = any(r.error_code for r in rows)
    cells = [
        [r.device, r.profile, r.model, r.state]
        + ([f"{r.error_code}: {r.error_message}" if r.error_code else ""] if errors else [])
        for r in rows
    ]
    return table_lines(_ROWS if errors else _ROWS[:-1], cells, output_width())
