"""``compress(measure=...)``: latency from somewhere else (a device) decides, this machine's
figures stay in the report, and a candidate that could not be measured there is skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefleet.controller.compress import Candidate, PassOptions, compress
from edgefleet.harness import digits, write_digits_model
from edgefleet.shared.errors import ModelError

from .conftest import make_profile

PASSES = ["graph_opt", "int8_dynamic"]
PER_TENSOR = PassOptions(per_channel=(False,))


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mlp")
    x, y = digits()
    np.savez(root / "eval.npz", inputs=x[1500:], labels=y[1500:])
    return write_digits_model(root / "digits.onnx", seed=0), root / "eval.npz"


def test_the_measured_figures_decide_and_the_local_ones_stay(
    mlp: tuple[Path, Path], tmp_path: Path
) -> None:
    seen: list[list[Candidate]] = []
    # fp32 is made the fastest there, whatever it is here
    remote = {"fp32": (0.5, 0.7), "fp32.opt-basic": (2.0, 3.0), "fp32.int8dyn": "load failed"}

    def measure(candidates: list[Candidate]) -> dict[str, tuple[float, float] | str]:
        seen.append(candidates)
        assert all(c.path.is_file() for c in candidates)
        return remote  # type: ignore[return-value]

    report = compress(
        *mlp, make_profile(PASSES), tmp_path / "out", latency_runs=3,
        measure=measure, measured_on="box-1", options=PER_TENSOR,
    )  # fmt: skip

    assert [c.name for c in seen[0]] == ["fp32", "fp32.opt-basic", "fp32.int8dyn"]
    assert [c.name for c in report.candidates] == ["fp32", "fp32.opt-basic"]
    assert report.chosen.name == "fp32"
    assert [(c.latency_ms_p50, c.latency_ms_p95) for c in report.candidates] == [
        (0.5, 0.7),
        (2.0, 3.0),
    ]
    assert all(c.local_latency_ms_p50 and c.local_latency_ms_p95 for c in report.candidates)
    assert report.skipped == [{"candidate": "fp32.int8dyn", "why": "on box-1: load failed"}]
    data = json.loads(report.to_json())
    assert data["measured_on"] == "box-1"
    assert data["chosen"]["local_latency_ms_p50"] == report.chosen.local_latency_ms_p50


def test_a_remote_latency_past_the_budget_is_a_breach(
    mlp: tuple[Path, Path], tmp_path: Path
) -> None:
    def measure(candidates: list[Candidate]) -> dict[str, tuple[float, float] | str]:
        return {c.name: (50.0 if c.name == "fp32" else 1.0, 60.0) for c in candidates}

    report = compress(
        *mlp, make_profile(PASSES, max_latency_ms=10.0, max_accuracy_drop=0.5),
        tmp_path / "out", latency_runs=3, measure=measure,
    )  # fmt: skip

    assert [b.text for b in report.reference.breaches] == ["latency p50 50.000 ms > 10.000 ms"]
    assert report.chosen.name != "fp32"


def test_a_reference_not_measured_there_is_an_error(mlp: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="fp32 reference was not measured on box-1: gone"):
        compress(
            *mlp, make_profile(PASSES), tmp_path / "out", latency_runs=3,
            measure=lambda cs: {c.name: "gone" for c in cs}, measured_on="box-1",
        )  # fmt: skip


def test_without_measure_the_report_is_as_before(mlp: tuple[Path, Path], tmp_path: Path) -> None:
    data = json.loads(
        compress(*mlp, make_profile(PASSES), tmp_path / "out", latency_runs=3).to_json()
    )
    assert "measured_on" not in data
    assert all("local_latency_ms_p50" not in c for c in data["candidates"])
