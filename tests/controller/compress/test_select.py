"""Selection rules on synthetic measurements: budgets, objective, and the none-fits error."""

from __future__ import annotations

import pytest

from edgefleet.controller.compress import Measured, NoCandidateFits, breaches, choose
from edgefleet.controller.compress._select import closest
from edgefleet.controller.home import Budgets
from edgefleet.shared.errors import ConfigError, EdgefleetError

BUDGETS = Budgets(max_size_bytes=1000, max_latency_ms=2.0, max_accuracy_drop=0.01)


def m(name: str, size: int, p50: float, drop: float = 0.0) -> Measured:
    return Measured(name, {"steps": []}, size, p50, p50 * 1.2, 0.95 - drop, drop)


def test_breaches_name_each_budget_broken() -> None:
    assert breaches(m("ok", 1000, 2.0, 0.01), BUDGETS) == ()
    found = breaches(m("bad", 1500, 3.0, 0.02), BUDGETS)
    assert [b.budget for b in found] == ["max_size_bytes", "max_latency_ms", "max_accuracy_drop"]
    assert [b.text for b in found] == [
        "size 1,500 B > 1,000 B",
        "latency p50 3.000 ms > 2.000 ms",
        "metric drop 0.0200 > 0.0100",
    ]


def test_latency_objective_takes_the_fastest_inside_the_budget() -> None:
    cands = [
        m("fp32", 4000, 1.0),  # fastest but too big
        m("int8", 900, 1.5),
        m("pruned", 300, 1.2, drop=0.05),  # too inaccurate
        m("tiny", 200, 1.8),
    ]
    assert choose(cands, BUDGETS, "latency").name == "int8"


def test_size_objective_takes_the_smallest_inside_the_budget() -> None:
    cands = [m("int8", 900, 1.5), m("pruned", 300, 1.2, drop=0.05), m("tiny", 200, 1.8)]
    assert choose(cands, BUDGETS, "size").name == "tiny"


def test_ties_are_broken_by_the_other_measure_then_name() -> None:
    assert choose([m("b", 500, 1.0), m("a", 400, 1.0)], BUDGETS, "latency").name == "a"
    assert choose([m("b", 500, 1.0), m("a", 500, 0.5)], BUDGETS, "size").name == "a"
    assert choose([m("b", 500, 1.0), m("a", 500, 1.0)], BUDGETS, "size").name == "a"


def test_none_fits_lists_the_closest_and_what_each_broke() -> None:
    cands = [
        m("far", 9000, 9.0, 0.5),
        m("slow", 900, 2.5),
        m("big", 1100, 1.0),
        m("lossy", 500, 1.0, 0.03),
        m("huge", 100_000, 1.0),
    ]
    with pytest.raises(NoCandidateFits) as caught:
        choose(cands, BUDGETS, "latency")
    err = caught.value
    assert isinstance(err, EdgefleetError) and err.code == "no_candidate_fits"
    assert err.message.splitlines() == [
        "none of 5 candidates fits the budget; the closest:",
        "  big: size 1,100 B > 1,000 B",
        "  slow: latency p50 2.500 ms > 2.000 ms",
        "  lossy: metric drop 0.0300 > 0.0100",
    ]
    assert [c.name for c in closest(cands, BUDGETS)][-1] == "huge"


def test_no_candidates_at_all() -> None:
    with pytest.raises(NoCandidateFits, match="no candidates"):
        choose([], BUDGETS, "latency")


def test_unknown_objective() -> None:
    with pytest.raises(ConfigError, match=r"unknown objective 'accuracy' \(known: latency, size\)"):
        choose([m("a", 1, 1.0)], BUDGETS, "accuracy")  # type: ignore[arg-type]
