"""How a rollout looks in the terminal: its summary, waves, gates and evidence, each table
narrow enough for 80 columns (the full text of every cell is in ``--json``).

Waves are numbered from 1 here, as in the engine's reasons ("wave 1 of 4 started");
the JSON keeps the registry's numbers, from 0."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .. import rollout
from ..registry import (
    ACTIVE_ROLLOUT_STATES,
    DeploymentPublic,
    GateEvaluationPublic,
    RolloutDetail,
    RolloutPublic,
    WavePublic,
)
from ._render import when

_STATUS_HINT = "watch it: edgefleet rollout status {id} --watch"


def compact_table(*headers: str, title: str | None = None) -> Table:
    """A borderless table (two spaces between columns) whose first column never wraps."""
    table = Table(
        box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False,
        title=title, title_justify="left",
    )  # fmt: skip
    for i, header in enumerate(headers):
        table.add_column(header, no_wrap=i == 0, overflow="fold")
    return table


def short_when(value: datetime | None, *, seconds: bool = False) -> str:
    """``11-30 18:20`` (UTC, as everywhere in the CLI): the year is rarely news in a table."""
    return value.strftime("%m-%d %H:%M:%S" if seconds else "%m-%d %H:%M") if value else "-"


def duration_text(seconds: float | None) -> str:
    """``900`` → ``15m``, ``5400`` → ``1h30m``, ``2.5`` → ``2.5s``."""
    if seconds is None:
        return "-"
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    s = int(seconds)
    parts = [(s // 86400, "d"), (s % 86400 // 3600, "h"), (s % 3600 // 60, "m"), (s % 60, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def selector_text(selector: dict[str, Any], limit: int = 3) -> str:
    """``{"profile": "rpi4", "labels": {"site": ["home", "lab"]}}`` → ``profile rpi4,
    labels site=home|lab``; a long device list ends in ``+N``."""
    if devices := selector.get("devices"):
        more = f" +{len(devices) - limit}" if len(devices) > limit else ""
        return f"devices {', '.join(devices[:limit])}{more}"
    parts = []
    if profile := selector.get("profile"):
        parts.append(f"profile {profile}")
    if labels := selector.get("labels"):
        parts.append(
            "labels "
            + " ".join(
                f"{k}={v if isinstance(v, str) else '|'.join(v)}" for k, v in sorted(labels.items())
            )
        )
    return ", ".join(parts) or "-"


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items()) if n) or "no devices"


def done_text(r: RolloutPublic) -> str:
    """Committed out of every row of the rollout."""
    return f"{r.counts.get('committed', 0)}/{sum(r.counts.values())}"


def wave_position(r: RolloutPublic) -> str:
    return f"{min(r.current_wave + 1, r.waves)}/{r.waves}"


def rollouts_table(rows: list[RolloutPublic]) -> Table:
    table = compact_table("rollout", "model", "state", "wave", "done", "started")
    for r in rows:
        table.add_row(
            r.rollout_id, r.model, r.state, wave_position(r), done_text(r),
            short_when(r.created_at),
        )  # fmt: skip
    return table


def plan_text(plan: dict[str, Any]) -> str:
    """The stored plan in one or two lines: waves, bake, gates, policy, timeout, window."""
    p = rollout.RolloutPlan.model_validate(plan)
    parts = [f"waves {','.join(p.waves)} (at least {p.min_wave_devices} a wave)"]
    if p.bake is not None:
        b = p.bake
        parts.append(
            f"bake ≥{b.min_requests} requests/device, "
            f"{duration_text(b.min_s)} to {duration_text(b.max_s)}"
        )
    if p.gates is None:
        parts.append("no gates")
    else:
        parts.append(f"gates {','.join(p.gates.enabled)} (quorum {p.gates.quorum:.0%})")
        parts.append(f"on fail {p.on_fail}")
    parts.append(f"device timeout {duration_text(p.in_progress_timeout_s)}")
    if p.window is not None:
        w = p.window
        parts.append(f"window '{w.cron}' for {duration_text(w.duration_s)} ({w.tz})")
    return "; ".join(parts)


def summary(r: RolloutPublic, plan: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    by = f" by {r.started_by}" if r.started_by else ""
    rows = [
        ("rollout", r.rollout_id),
        ("model", f"{r.model} → {selector_text(r.selector)}"),
        ("state", f"{r.state}, wave {wave_position(r)}"),
        ("reason", r.reason or "-"),
        ("started", f"{when(r.created_at)}{by}"),
        ("note", r.note or "-"),
        ("updated", when(r.updated_at)),
        ("devices", counts_text(r.counts)),
        ("plan", plan_text(plan)),
    ]
    for key, value in rows:
        table.add_row(key, Text(value))  # operators' words: never rich markup
    return table


def waves_table(waves: list[WavePublic], plan: dict[str, Any]) -> Table:
    """Each wave's target (the plan's cumulative spec), its size, and where it is."""
    specs = list(plan.get("waves") or [])
    table = compact_table("wave", "target", "devices", "state", "started", "decided", title="waves")
    for w in waves:
        devices = str(w.planned)
        if w.queued:
            devices += f" ({len(w.queued)} offline)"
        table.add_row(
            str(w.number + 1), specs[w.number] if w.number < len(specs) else "-", devices,
            w.state, short_when(w.started_at),
            f"{w.decision} {short_when(w.decided_at)}" if w.decision else "-",
        )  # fmt: skip
    return table


def latest_per_gate(evaluations: list[GateEvaluationPublic]) -> list[GateEvaluationPublic]:
    """The newest evaluation of each gate (the list comes oldest first), in gate order."""
    latest: dict[str, GateEvaluationPublic] = {}
    for e in evaluations:
        latest[e.gate] = e
    return list(latest.values())


def gates_table(evaluations: list[GateEvaluationPublic], wave: int) -> Table:
    table = compact_table(
        "gate", "decision", "figure", "limit", "detail", title=f"gates, wave {wave + 1}"
    )
    for e in evaluations:  # the detail cut short: `analysis` has the whole text
        table.add_row(
            e.gate,
            e.decision,
            figure(e.statistic),
            figure(e.threshold),
            Text(abbreviated(e.detail)),
        )
    return table


def abbreviated(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def status_view(detail: RolloutDetail, gates: list[GateEvaluationPublic]) -> RenderableType:
    r = detail.rollout
    parts: list[RenderableType] = [
        summary(r, detail.plan),
        "",
        waves_table(detail.waves, detail.plan),
    ]
    if gates:
        parts += ["", gates_table(gates, gates[0].wave)]
    elif detail.plan.get("gates") is not None and r.state in ACTIVE_ROLLOUT_STATES:
        parts += ["", f"no gate evaluation yet for wave {r.current_wave + 1}"]
    return Group(*parts)


def analysis_view(evaluations: list[GateEvaluationPublic], *, with_wave: bool) -> Group:
    """One line per evaluation (when, wave, gate, decision, figure / limit), its detail
    wrapped below it: the detail is the long part, and a table column would squeeze it."""
    rows = [
        [short_when(e.at, seconds=True), *([str(e.wave + 1)] if with_wave else []), e.gate,
         e.decision, f"{figure(e.statistic)} / {figure(e.threshold)}"]
        for e in evaluations
    ]  # fmt: skip
    headers = ["at", *(["wave"] if with_wave else []), "gate", "decision", "figure / limit"]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    parts: list[RenderableType] = [Text(line(headers), style="bold")]
    for cells, e in zip(rows, evaluations, strict=True):
        parts += [Text(line(cells)), Padding(Text(e.detail or "-"), (0, 0, 0, 4))]
    return Group(*parts)


def rows_table(rows: list[DeploymentPublic]) -> Table:
    """Deployment rows (a rollback's orders, a deploy's targets)."""
    table = compact_table("device", "profile", "model", "state", "error")
    for row in rows:
        error = f"{row.error_code}: {row.error_message}" if row.error_code else "-"
        table.add_row(row.device, row.profile, row.model, row.state, Text(error))
    return table


def started_text(detail: RolloutDetail) -> str:
    r = detail.rollout
    targets = sum(w.planned for w in detail.waves)
    return (
        f"rollout {r.rollout_id}: {r.model} to {targets} device(s) in {r.waves} wave(s), "
        f"{r.state}\n" + _STATUS_HINT.format(id=r.rollout_id)
    )


def changed_text(r: RolloutPublic) -> str:
    why = f" ({r.reason})" if r.reason else ""
    return f"rollout {r.rollout_id}: {r.state}, wave {wave_position(r)}{why}"
