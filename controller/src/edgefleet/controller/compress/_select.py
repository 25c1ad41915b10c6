"""Choosing a variant: every measured candidate checked against the profile's budgets, the
best of those inside by the objective, and when none fits, an error naming the closest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from edgefleet.shared.errors import ConfigError, EdgefleetError

from ..home import Budgets

Objective = Literal["latency", "size"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
CLOSEST_SHOWN = 3


class NoCandidateFits(EdgefleetError):
    """Every candidate, the fp32 reference included, broke at least one budget."""

    code = "no_candidate_fits"


@dataclass(frozen=True)
class Measured:
    """One candidate as measured against the fp32 reference in the same run."""

    name: str
    recipe: dict[str, Any]
    size_bytes: int
    latency_ms_p50: float
    latency_ms_p95: float
    metric: float  # the metric's own value (accuracy, mse or cosine similarity)
    drop: float  # how much worse than the reference; 0 is as good
    path: Path | None = None
    # the worst evaluation row's metric and its drop (cosine, mse; None for top1)
    metric_worst: float | None = None
    drop_worst: float | None = None
    breaches: tuple[Breach, ...] = field(default=())
    # this machine's figures, kept when the latency above was measured elsewhere (a device)
    local_latency_ms_p50: float | None = None
    local_latency_ms_p95: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = None if self.path is None else str(self.path)
        data["breaches"] = [b.text for b in self.breaches]
        if self.local_latency_ms_p50 is None:
            del data["local_latency_ms_p50"], data["local_latency_ms_p95"]
        return data


@dataclass(frozen=True)
class Breach:
    budget: Literal["max_size_bytes", "max_latency_ms", "max_accuracy_drop", "max_worst_drop"]
    limit: float
    actual: float

    @property
    def excess(self) -> float:
        """How far past the limit, relative to it: 0.5 means 50% over."""
        if self.limit == 0:
            return float("inf") if self.actual > 0 else 0.0
        return self.actual / self.limit - 1.0

    @property
    def text(self) -> str:
        if self.budget == "max_size_bytes":
            return f"size {self.actual:,.0f} B > {self.limit:,.0f} B"
        if self.budget == "max_latency_ms":
            return f"latency p50 {self.actual:.3f} ms > {self.limit:.3f} ms"
        if self.budget == "max_worst_drop":
            return f"worst-row drop {self.actual:.4f} > {self.limit:.4f}"
        return f"metric drop {self.actual:.4f} > {self.limit:.4f}"


def breaches(candidate: Measured, budgets: Budgets) -> tuple[Breach, ...]:
    found = []
    if candidate.size_bytes > budgets.max_size_bytes:
        found.append(Breach("max_size_bytes", budgets.max_size_bytes, candidate.size_bytes))
    if candidate.latency_ms_p50 > budgets.max_latency_ms:
        found.append(Breach("max_latency_ms", budgets.max_latency_ms, candidate.latency_ms_p50))
    if candidate.drop > budgets.max_accuracy_drop:
        found.append(Breach("max_accuracy_drop", budgets.max_accuracy_drop, candidate.drop))
    worst = candidate.drop_worst
    if budgets.max_worst_drop is not None and worst is not None and worst > budgets.max_worst_drop:
        found.append(Breach("max_worst_drop", budgets.max_worst_drop, worst))
    return tuple(found)


def check_objective(objective: str) -> Objective:
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")
    return objective  # type: ignore[return-value]


def choose(candidates: Sequence[Measured], budgets: Budgets, objective: Objective) -> Measured:
    """The candidate inside every budget that is fastest (median) or smallest, ties broken
    by the other measure and then by name so the choice is stable."""
    check_objective(objective)
    if not candidates:
        raise NoCandidateFits("there are no candidates to choose from")
    fitting = [c for c in candidates if not breaches(c, budgets)]
    if not fitting:
        raise NoCandidateFits(_none_fits_text(candidates, budgets))
    if objective == "latency":
        return min(fitting, key=lambda c: (c.latency_ms_p50, c.size_bytes, c.name))
    return min(fitting, key=lambda c: (c.size_bytes, c.latency_ms_p50, c.name))


def closest(candidates: Sequence[Measured], budgets: Budgets) -> list[Measured]:
    """Candidates ordered by how far past their budgets they are, in total."""
    return sorted(
        candidates,
        key=lambda c: (sum(b.excess for b in breaches(c, budgets)), c.name),
    )


def _none_fits_text(candidates: Sequence[Measured], budgets: Budgets) -> str:
    lines = [f"none of {len(candidates)} candidates fits the budget; the closest:"]
    for c in closest(candidates, budgets)[:CLOSEST_SHOWN]:
        broke = "; ".join(b.text for b in breaches(c, budgets))
        lines.append(f"  {c.name}: {broke}")
    return "\n".join(lines)
