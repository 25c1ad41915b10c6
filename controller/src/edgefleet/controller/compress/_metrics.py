"""How close a candidate's outputs are to the truth or to the fp32 reference.

Every metric is turned into a *drop* (0 is perfect, larger is worse) so one budget,
``max_accuracy_drop``, reads the same whichever metric the operator chose."""

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
    diff = outputs.astype(np.float64) - reference.astype(np.float64)
    return float(np.mean(diff * diff))


def cosine(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Mean over rows of the cosine similarity to the reference row (1.0 is identical)."""
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    # two all-zero rows are the same; one all-zero row against anything else is not
    both_zero = norms == 0
    same = np.where(both_zero, np.all(a == b, axis=1).astype(np.float64), 0.0)
    sims = np.where(both_zero, same, dots / np.where(both_zero, 1.0, norms))
    return float(np.mean(sims))


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


def drop(name: MetricName, reference_score: float, candidate_score: float) -> float:
    """How much worse the candidate is than the reference, 0 when it is as good or better."""
    if name == "top1":
        return max(0.0, reference_score - candidate_score)
    if name == "mse":  # the reference scores 0 against itself
        return max(0.0, candidate_score - reference_score)
    if name == "cosine":
        return max(0.0, reference_score - candidate_score)
    raise ConfigError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")
