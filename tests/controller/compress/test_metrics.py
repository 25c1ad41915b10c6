"""The metric functions on arrays whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.controller.compress import cosine, cosine_rows, mse, mse_rows, top1, worst
from edgefleet.controller.compress._metrics import check_metric, drop, score
from edgefleet.shared.errors import ConfigError


def test_top1() -> None:
    outputs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert top1(outputs, np.array([1, 0, 0, 1])) == 0.5
    assert top1(outputs, np.array([1, 0, 1, 0])) == 1.0


def test_mse() -> None:
    assert mse(np.array([[1.0, 2.0]]), np.array([[1.0, 2.0]])) == 0.0
    assert mse(np.array([[1.0, 3.0], [0.0, 0.0]]), np.array([[1.0, 1.0], [0.0, 2.0]])) == 2.0


def test_cosine() -> None:
    ref = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    out = np.array([[2.0, 0.0], [-1.0, -1.0], [0.0, 0.0], [1.0, 0.0]])
    # same direction 1, opposite -1, both zero 1, zero against non-zero 0
    assert cosine(out, ref) == pytest.approx((1 - 1 + 1 + 0) / 4)
    assert cosine(np.array([[0.0, 3.0]]), np.array([[5.0, 0.0]])) == pytest.approx(0.0)


def test_drop_is_zero_at_best_and_grows_when_worse() -> None:
    assert drop("top1", 0.95, 0.94) == pytest.approx(0.01)
    assert drop("top1", 0.95, 0.97) == 0.0
    assert drop("mse", 0.0, 0.25) == 0.25
    assert drop("cosine", 1.0, 0.9) == pytest.approx(0.1)


def test_score_against_reference() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert score("top1", ref, ref, np.array([0, 1])) == 1.0
    assert score("mse", ref, ref, None) == 0.0
    assert score("cosine", ref, ref, None) == pytest.approx(1.0)


def test_unknown_metric() -> None:
    with pytest.raises(ConfigError, match=r"unknown metric 'f1' \(known: top1, mse, cosine\)"):
        check_metric("f1", has_labels=True)
    with pytest.raises(ConfigError, match="unknown metric"):
        drop("f1", 0.0, 0.0)  # type: ignore[arg-type]


def test_top1_needs_labels() -> None:
    with pytest.raises(ConfigError, match="needs labels"):
        check_metric("top1", has_labels=False)
    assert check_metric("cosine", has_labels=False) == "cosine"


def test_rows_and_the_worst_row() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    assert cosine_rows(out, ref) == pytest.approx([1.0, 2**-0.5, 1.0])
    assert worst("cosine", out, ref) == pytest.approx(2**-0.5)
    assert mse_rows(out, ref) == pytest.approx([0.0, 0.5, 1.0])
    assert worst("mse", out, ref) == pytest.approx(1.0)
    assert worst("top1", out, ref) is None  # a fraction of rows has no worst row
    # the mean hides the one bad row the worst case shows
    assert cosine(out, ref) > 0.9 > worst("cosine", out, ref)  # type: ignore[operator]
