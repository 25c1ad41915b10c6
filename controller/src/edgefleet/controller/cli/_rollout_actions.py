"""``edgefleet rollout pause|resume|promote|abort`` and ``edgefleet rollback``: what an
operator does to a rollout, and devices sent back to their previous model by hand; each
recorded with who (``$EDGEFLEET_USER`` or the login name) and ``--reason``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .. import rollout
from ._app import JsonFlag, app, opened_home
from ._render import console, print_json
from ._rollout import Devices, Profile, Reason, RolloutId, rollout_app
from ._rollout_render import changed_text, rows_table


@rollout_app.command("pause")
def rollout_pause(
    ctx: typer.Context, rollout_id: RolloutId, reason: Reason = "", as_json: JsonFlag = False
) -> None:
    """Pause a rollout: no further orders are sent and no wave is judged.

    Devices that already have their order carry on. `resume` continues.
    """
    with opened_home(ctx) as home:
        changed = rollout.pause_rollout(home, rollout_id, by=rollout.operator_name(), reason=reason)
    _print_changed(changed, as_json)


@rollout_app.command("resume")
def rollout_resume(
    ctx: typer.Context, rollout_id: RolloutId, reason: Reason = "", as_json: JsonFlag = False
) -> None:
    """Resume a paused rollout (paused by you, a gate or --on-fail hold).

    A wave that was baking bakes afresh; the evidence that paused it stands.
    """
    with opened_home(ctx) as home:
        changed = rollout.resume_rollout(
            home, rollout_id, by=rollout.operator_name(), reason=reason
        )
    _print_changed(changed, as_json)


@rollout_app.command("promote")
def rollout_promote(
    ctx: typer.Context,
    rollout_id: RolloutId,
    full: Annotated[
        bool, typer.Option("--full", help="Skip every remaining wave: all targets at once.")
    ] = False,
    reason: Reason = "",
    as_json: JsonFlag = False,
) -> None:
    """Pass the current wave by hand, without its bake and gates: next wave.

    With --full every remaining device goes in one last wave; promoting the
    last wave completes the rollout.
    """
    with opened_home(ctx) as home:
        changed = rollout.promote_rollout(
            home, rollout_id, full=full, by=rollout.operator_name(), reason=reason
        )
    _print_changed(changed, as_json)


@rollout_app.command("abort")
def rollout_abort(
    ctx: typer.Context, rollout_id: RolloutId, reason: Reason = "", as_json: JsonFlag = False
) -> None:
    """Abort a rollout: no further waves, and every device it touched goes back.

    Unsent orders are cancelled; each device that took the version gets a
    signed rollback order to its own previous model (`edgefleet serve`
    sends them). `rollout status` shows rolling_back until all answered.
    """
    with opened_home(ctx) as home:
        changed = rollout.abort_rollout(home, rollout_id, by=rollout.operator_name(), reason=reason)
    _print_changed(changed, as_json)


def _print_changed(changed: Any, as_json: bool) -> None:
    if as_json:
        print_json(changed)
    else:
        typer.echo(changed_text(changed))


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    device: Devices = None,
    profile: Profile = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            metavar="KEY=VALUE",
            help="Every device with this label; repeatable, all must match.",
        ),
    ] = None,
    reason: Reason = "",
    as_json: JsonFlag = False,
) -> None:
    """Send devices back by hand to the model each served before its current one.

    One signed rollback order per device, undoing what it serves now;
    `edgefleet serve` sends them. A device whose previous model the registry
    does not know is refused, and then nothing is written.

      edgefleet rollback -d kitchen-pi --reason "answers look wrong"
    """
    labels = rollout.parse_label_selector(label or []) or None
    with opened_home(ctx) as home:
        rows = rollout.roll_back(
            home, devices=device or None, profile=profile, labels=labels,
            by=rollout.operator_name(), reason=reason,
        )  # fmt: skip
    if as_json:
        print_json(rows)
        return
    typer.echo(f"rollback ordered for {len(rows)} device(s); `edgefleet serve` sends it")
    console().print(rows_table(rows))
