"""``edgefleet rollout start|list|status|analysis``: starting a staged rollout and reading
where it is (the operator's actions on it are in ``_rollout_actions``).

``status`` exits 0 when the rollout completed, 1 when it was aborted and 3
(``EXIT_IN_PROGRESS``) while it is running, paused or rolling back, so scripts can wait on it.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

import pydantic
import typer
from rich.live import Live

from edgefleet.shared.errors import ConfigError

from .. import rollout
from ..home import Home
from ..registry import ACTIVE_ROLLOUT_STATES, GateEvaluationPublic, RolloutDetail, RolloutState
from ._app import EXIT_FAILURE, JsonFlag, app, opened_home
from ._render import console, print_json
from ._rollout_render import (
    analysis_view,
    duration_text,
    latest_per_gate,
    rollouts_table,
    started_text,
    status_view,
)

EXIT_IN_PROGRESS = 3  # `rollout status`: running, paused or rolling back

rollout_app = typer.Typer(
    help="Staged rollouts: waves, bake time and gates. Start one, watch it, pause, resume, "
    "promote or abort it, and read the evidence its gates judged.",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")

_DEFAULT = rollout.RolloutPlan()

RolloutId = Annotated[str, typer.Argument(help="The rollout id (see `edgefleet rollout list`).")]
Devices = Annotated[
    list[str] | None, typer.Option("--device", "-d", help="A target device; repeat for more.")
]
Profile = Annotated[
    str | None, typer.Option("--profile", "-p", help="Every device of this profile.")
]
Labels = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        "-l",
        metavar="KEY=VALUE",
        help="Every device with this label; a key repeated means any of its values, "
        "different keys and --profile must all match.",
    ),
]
Reason = Annotated[str, typer.Option("--reason", help="Why: recorded with your user name.")]


@rollout_app.command("start")
def rollout_start(
    ctx: typer.Context,
    ref: Annotated[
        str,
        typer.Argument(metavar="NAME:VERSION", help="The model version, e.g. digits:2.0.0."),
    ],
    device: Devices = None,
    profile: Profile = None,
    label: Labels = None,
    waves: Annotated[
        str | None,
        typer.Option(
            help="How many targets have it after each wave, comma-separated: device counts "
            "or percentages of the targets (devices left over go in one more wave).",
            show_default=",".join(_DEFAULT.waves),
        ),
    ] = None,
    min_wave_devices: Annotated[
        int | None,
        typer.Option(
            min=1, help="No wave smaller than this.", show_default=str(_DEFAULT.min_wave_devices)
        ),
    ] = None,
    bake: Annotated[
        str | None,
        typer.Option(
            metavar="KEY=VALUE,...",
            help="How long each wave bakes before its gates may pass it, comma-separated: "
            "min_requests=N (a device), min=DURATION, max=DURATION, settle=DURATION"
            " (latency is read from this long after each device's swap on).",
            show_default="min_requests=100, min=60s, max=15m, settle=10s",
        ),
    ] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            "--gate",
            help="A gate setting KEY=VALUE, repeatable: quorum, install.min_finished, "
            "latency.tolerance, latency.alpha, latency.limit_ms, errors.threshold, "
            "errors.min_requests, errors.confidence (e.g. quorum=0.9, latency.tolerance=20%); "
            "off=, on= or only= GATES among install, latency, absolute, errors.",
        ),
    ] = None,
    no_gates: Annotated[
        bool,
        typer.Option(
            "--no-gates", help="A plain staged deploy: no bake, no gates; waves follow each other."
        ),
    ] = False,
    on_fail: Annotated[
        Literal["rollback", "hold"],
        typer.Option(
            help="When a gate fails: roll every touched device back, or hold (pause) for you."
        ),
    ] = "rollback",
    timeout: Annotated[
        str | None,
        typer.Option(
            help="A device silent this long after its order counts as failed, e.g. 15m.",
            show_default=duration_text(_DEFAULT.in_progress_timeout_s),
        ),
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(
            metavar="CRON",
            help="Maintenance window: the rollout's orders go out only from each time this "
            "cron expression (5 fields) fires until --window-duration later, e.g. '0 2 * * *'; "
            "rollback orders go at once.",
        ),
    ] = None,
    window_duration: Annotated[
        str | None, typer.Option(help="How long each maintenance window lasts, e.g. 2h.")
    ] = None,
    window_tz: Annotated[
        str, typer.Option(help="The time zone of --window, e.g. Europe/Berlin.")
    ] = "UTC",
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Roll out even a variant larger than its profile's size budget."
        ),
    ] = False,
    reason: Reason = "",
    as_json: JsonFlag = False,
) -> None:
    """Start a staged rollout of a model version; `edgefleet serve` carries it out.

    By default 1 device gets it first, then 10%, 50% and 100% of the targets.
    Each wave bakes (100 requests a device, 1 to 15 minutes), then its gates
    judge it: install health, latency against the same devices' previous
    model, p95 against the profile's budget, and the error rate. The next
    wave starts only when they pass; a failed gate rolls every touched device
    back (or holds, with --on-fail hold); an inconclusive one pauses.

    Examples:

      edgefleet rollout start digits:2.0.0 --profile rpi4

      edgefleet rollout start digits:2.0.0 -l site=lab --waves 2,50%,100%
        --bake min_requests=500,min=5m,max=30m --reason "ticket 1234"

      edgefleet rollout start digits:2.0.0 -p rpi4 --gate quorum=0.9
        --gate latency.tolerance=0.2 --gate off=errors --on-fail hold

      edgefleet rollout start digits:2.0.0 -p rpi4 --window "0 2 * * *"
        --window-duration 2h --window-tz Europe/Berlin --timeout 30m
    """
    plan = _plan_of(
        waves=waves, min_wave_devices=min_wave_devices, bake=bake, gate=gate or [],
        no_gates=no_gates, on_fail=on_fail, timeout=timeout, window=window,
        window_duration=window_duration, window_tz=window_tz,
    )  # fmt: skip
    labels = rollout.parse_label_selector(label or []) or None
    with opened_home(ctx) as home:
        detail = rollout.start_rollout(
            home, ref, devices=device or None, profile=profile, labels=labels, plan=plan,
            started_by=rollout.operator_name(), note=reason, force=force,
        )  # fmt: skip
    if as_json:
        print_json(detail)
    else:
        typer.echo(started_text(detail))


def _plan_of(
    *,
    waves: str | None,
    min_wave_devices: int | None,
    bake: str | None,
    gate: list[str],
    no_gates: bool,
    on_fail: str,
    timeout: str | None,
    window: str | None,
    window_duration: str | None,
    window_tz: str,
) -> rollout.RolloutPlan:
    """The plan from the flags; what is not given keeps ``RolloutPlan``'s default."""
    fields: dict[str, Any] = {"on_fail": on_fail}
    if waves is not None:
        fields["waves"] = rollout.parse_waves(waves)
    if min_wave_devices is not None:
        fields["min_wave_devices"] = min_wave_devices
    if no_gates:
        if bake is not None or gate:
            raise ConfigError("--no-gates cannot be combined with --bake or --gate")
        fields["bake"], fields["gates"] = None, None
    else:
        fields["bake"] = rollout.parse_bake(bake) if bake is not None else rollout.Bake()
        fields["gates"] = rollout.parse_gate_options(gate)
    if timeout is not None:
        fields["in_progress_timeout_s"] = rollout.parse_duration(timeout)
    if window is not None:
        if window_duration is None:
            raise ConfigError("--window needs --window-duration, e.g. --window-duration 2h")
        fields["window"] = rollout.parse_window(window, window_duration, window_tz)
    elif window_duration is not None or window_tz != "UTC":
        raise ConfigError("--window-duration and --window-tz need --window CRON")
    try:
        return rollout.RolloutPlan(**fields)
    except pydantic.ValidationError as exc:  # a flag the parsers let through
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "plan"
        raise ConfigError(f"bad rollout plan: {where}: {error['msg']}") from None


@rollout_app.command("list")
def rollout_list(
    ctx: typer.Context,
    active: Annotated[
        bool, typer.Option("--active", help="Only running, paused or rolling-back rollouts.")
    ] = False,
    limit: Annotated[int, typer.Option(help="How many of the newest rollouts.", min=1)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List rollouts (plain deploys included), newest first."""
    with opened_home(ctx) as home:
        rows = rollout.list_rollouts(home, active_only=active, limit=limit)
    if as_json:
        print_json(rows)
    else:
        console().print(rollouts_table(rows))


@rollout_app.command("status")
def rollout_status(
    ctx: typer.Context,
    rollout_id: RolloutId,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", "-w", help="Show it again on every change until it ends or Ctrl-C."
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(help="With --watch: seconds between looks.", min=0.1)
    ] = 2.0,
    as_json: JsonFlag = False,
) -> None:
    """Show a rollout: state, waves, devices per state, its gates' latest figures.

    Exit code: 0 completed, 1 aborted, 3 running, paused or rolling back.

    The gates shown are the newest evaluation of each gate for the current
    wave, figure beside limit (`rollout analysis` has them all). With --json
    the rollout's detail gains "gates", those evaluations; with --watch
    --json, one such object a line on every change.
    """
    with opened_home(ctx) as home:
        if watch:
            state = _watch(home, rollout_id, interval=interval, as_json=as_json)
        else:
            detail, gates = _look(home, rollout_id)
            state = detail.rollout.state
            if as_json:
                print_json(_status_json(detail, gates))
            else:
                console().print(status_view(detail, gates))
    raise typer.Exit(_exit_code(state))


def _look(home: Home, rollout_id: str) -> tuple[RolloutDetail, list[GateEvaluationPublic]]:
    detail = rollout.rollout_detail(home, rollout_id)
    wave = detail.rollout.current_wave
    return detail, latest_per_gate(rollout.gate_analysis(home, rollout_id, wave=wave))


def _status_json(detail: RolloutDetail, gates: list[GateEvaluationPublic]) -> dict[str, Any]:
    return {**detail.model_dump(mode="json"), "gates": [g.model_dump(mode="json") for g in gates]}


def _watch(home: Home, rollout_id: str, *, interval: float, as_json: bool) -> str:
    """Look every ``interval`` seconds and show what changed, until the rollout is no longer
    active or Ctrl-C; the last state seen. On a terminal the table is redrawn in place."""
    out = console()
    live = Live(console=out, auto_refresh=False) if out.is_terminal and not as_json else None
    seen, state = "", RolloutState.RUNNING.value
    try:
        if live is not None:
            live.start()
        while True:
            detail, gates = _look(home, rollout_id)
            state = detail.rollout.state
            now = json.dumps(_status_json(detail, gates), sort_keys=True)
            if now != seen:
                seen = now
                if as_json:
                    typer.echo(now)
                elif live is not None:
                    live.update(status_view(detail, gates), refresh=True)
                else:
                    out.print(status_view(detail, gates))
                    out.print()
            if state not in ACTIVE_ROLLOUT_STATES:
                return state
            time.sleep(interval)
    except KeyboardInterrupt:
        return state
    finally:
        if live is not None:
            live.stop()


def _exit_code(state: str) -> int:
    if state == RolloutState.COMPLETED:
        return 0
    if state == RolloutState.ABORTED:
        return EXIT_FAILURE
    return EXIT_IN_PROGRESS


@rollout_app.command("analysis")
def rollout_analysis(
    ctx: typer.Context,
    rollout_id: RolloutId,
    wave: Annotated[
        int | None,
        typer.Option(help="Only this wave, numbered from 1 as `status` shows them.", min=1),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the gate evidence: every evaluation of a rollout, oldest first.

    Each row is one gate's figure beside its limit, its decision and why.
    --json adds the inputs each figure was computed from (its "wave" counts
    from 0).
    """
    with opened_home(ctx) as home:
        evaluations = rollout.gate_analysis(
            home, rollout_id, wave=None if wave is None else wave - 1
        )
    if as_json:
        print_json(evaluations)
    elif not evaluations:
        typer.echo(f"no gate evaluation yet for {rollout_id}")
    else:
        console().print(analysis_view(evaluations, with_wave=wave is None))
