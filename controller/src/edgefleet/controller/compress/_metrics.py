"""How close a candidate's outputs are to the truth or to the fp32 reference.

Every metric is turned into a *drop* (0 is perfect, larger is worse) so one budget,
``max_accuracy_drop``, reads the same whichever metric the operator chose. For cosine and
mse the worst row is reported too, and ``max_worst_drop`` bounds its drop."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from edgefleet.shared.errors import ConfigError

MetricName = Literal["top1", "mse", "cosine"]
METRICS: tuple[str, ...] = get_args(MetricName)


def check_metric(name: str, has_labels: bool) -> MetricName:
    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")
    if name == "top1" and not has_labels:
        raise ConfigError("metric 'top1' needs labels: add a 'labels' array to the data file")
    return name  # type: ignore[return-value]


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose highest output is the true class."""
    return float(np.mean(np.argmax(outputs.reshape(len(outputs), -1), axis=1) == labels))


def mse(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(mse_rows(outputs, reference)))


def mse_rows(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The mean squared error of each row against the reference row."""
    diff = outputs.reshape(len(outputs), -1).astype(np.float64) - reference.reshape(
        len(reference), -1
    ).astype(np.float64)
    return np.mean(diff * diff, axis=1)


def cosine(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Mean over rows of the cosine similarity to the reference row (1.0 is identical)."""
    return float(np.mean(cosine_rows(outputs, reference)))


def cosine_rows(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The cosine similarity of each row to the reference row."""
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    # two all-zero rows are the same; one all-zero row against anything else is not
    both_zero = norms == 0
    same = np.where(both_zero, np.all(a == b, axis=1).astype(np.float64), 0.0)
    return np.where(both_zero, same, dots / np.where(both_zero, 1.0, norms))


def score(
    name: MetricName, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None
) -> float:
    """The metric's own value: accuracy for top1, error for mse, similarity for cosine."""
    if name == "top1":
        if labels is None:
            raise ConfigError("metric 'top1' needs labels")
        return top1(outputs, labels)
    if name == "mse":
        return mse(outputs, reference)
    if name == "cosine":
        return cosine(outputs, reference)
    raise ConfigError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")


def worst(name: MetricName, outputs: np.ndarray, reference: np.ndarray) -> float | None:
    """The worst row: the lowest cosine or the highest mse; None for top1, which is a
    fraction of rows and has no worst row. One badly wrong embedding is what a user
    notices, and a mean over many rows hides it."""
    if name == "cosine":
        return float(np.min(cosine_rows(outputs, reference)))
    if name == "mse":
        return float(np.max(mse_rows(outputs, reference)))
    return None


def drop(name: MetricName, reference_score: float, candidate_score: float) -> float:
    """How much worse the candidate is than the reference, 0 when it is as good or better."""
    if name == "top1":
        return max(0.0, reference_score - candidate_score)
    if name == "mse":  # the reference scores 0 against itself
        return max(0.0, candidate_score - reference_score)
    if name == "cosine":
        return max(0.0, reference_score - candidate_score)
    raise ConfigError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")
