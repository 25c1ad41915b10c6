"""``compress`` end to end on the digits CNN with small profiles, and its error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefleet.controller.compress import (
    NoCandidateFits,
    PassOptions,
    compress,
    needs_reduce_range,
)
from edgefleet.controller.home import builtin_profiles_dir, load_profiles
from edgefleet.shared.errors import ConfigError, InvalidInput

from .conftest import Digits, make_profile

FAST = PassOptions(
    prune_epochs=3, distill_epochs=3, calibration_methods=("minmax",), per_channel=(False,)
)


def test_compress_chooses_inside_the_budget_and_reports(digits: Digits, tmp_path: Path) -> None:
    profile = make_profile(["graph_opt", "int8_dynamic", "int8_static"], max_accuracy_drop=0.03)
    events: list[tuple[str, int, int]] = []
    report = compress(
        digits.onnx,
        digits.eval_npz,
        profile,
        tmp_path / "out",
        options=FAST,
        latency_runs=5,
        progress=lambda *e: events.append(e),
    )
    names = [c.name for c in report.candidates]
    assert names == ["fp32", "fp32.opt-basic", "fp32.int8dyn", "fp32.int8qdq-minmax"]
    assert report.reference.name == "fp32" and report.reference.drop == 0.0
    assert report.chosen.breaches == ()
    assert report.chosen.latency_ms_p50 == min(
        c.latency_ms_p50 for c in report.candidates if not c.breaches
    )
    assert report.calibration_rows + report.evaluation_rows == len(
        np.load(digits.eval_npz)["labels"]
    )
    assert {stage for stage, _, _ in events} == {"onnx passes", "evaluate", "latency"}
    assert events[-1] == ("latency", 5, 5)

    data = json.loads(report.to_json())
    for key in ("reference", "chosen"):
        assert {"recipe", "size_bytes", "latency_ms_p50", "latency_ms_p95", "metric"} <= set(
            data[key]
        )
    assert len(data["candidates"]) == 4
    assert data["reference"]["size_bytes"] == digits.onnx.stat().st_size
    assert Path(data["chosen"]["path"]).is_file()


def test_size_objective_with_torch_passes(digits: Digits, tmp_path: Path) -> None:
    profile = make_profile(["prune", "distill", "int8_static"], max_accuracy_drop=0.1)
    report = compress(
        digits.onnx,
        digits.eval_npz,
        profile,
        tmp_path,
        torch_model=digits.module,
        objective="size",
        options=FAST,
        latency_runs=3,
    )
    names = {c.name for c in report.candidates}
    assert {"pruned", "distilled", "pruned.int8qdq-minmax", "distilled.int8qdq-minmax"} <= names
    assert report.chosen.size_bytes == min(
        c.size_bytes for c in report.candidates if not c.breaches
    )
    assert report.chosen.size_bytes < report.reference.size_bytes / 10
    steps = [s["pass"] for s in report.chosen.recipe["steps"]]
    assert steps[-1] == "int8_static" and steps[0] in {"prune", "distill"}


def test_torch_passes_are_skipped_without_the_torch_model(digits: Digits, tmp_path: Path) -> None:
    profile = make_profile(["prune", "distill", "graph_opt"])
    report = compress(digits.onnx, digits.eval_npz, profile, tmp_path, latency_runs=2)
    assert [s["candidate"] for s in report.skipped] == ["prune", "distill"]
    assert {c.name for c in report.candidates} == {"fp32", "fp32.opt-basic"}


def test_the_same_seed_gives_the_same_candidates(digits: Digits, tmp_path: Path) -> None:
    profile = make_profile(["int8_static"])
    runs = [
        compress(digits.onnx, digits.eval_npz, profile, tmp_path / str(i), seed=5, latency_runs=2)
        for i in range(2)
    ]
    assert [(c.name, c.size_bytes, c.metric) for c in runs[0].candidates] == [
        (c.name, c.size_bytes, c.metric) for c in runs[1].candidates
    ]


def test_none_fits_is_a_clear_error(digits: Digits, tmp_path: Path) -> None:
    profile = make_profile(["int8_dynamic"], max_size_bytes=1000)
    with pytest.raises(NoCandidateFits, match=r"none of 2 candidates.*\n  fp32\.int8dyn: size"):
        compress(digits.onnx, digits.eval_npz, profile, tmp_path, latency_runs=2)


def test_a_profile_that_allows_nothing(digits: Digits, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="profile 'test-box' allows no compression passes"):
        compress(digits.onnx, digits.eval_npz, make_profile([]), tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metric": "f1"}, "unknown metric 'f1'"),
        ({"objective": "cost"}, "unknown objective 'cost'"),
        ({"max_drop": 2.0}, "max drop must be in"),
    ],
)
def test_bad_settings(digits: Digits, tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        compress(digits.onnx, digits.eval_npz, make_profile(["graph_opt"]), tmp_path, **kwargs)


def test_top1_without_labels_and_mismatched_inputs(digits: Digits, tmp_path: Path) -> None:
    np.savez(tmp_path / "nolabels.npz", inputs=np.load(digits.eval_npz)["inputs"])
    with pytest.raises(ConfigError, match="needs labels"):
        compress(digits.onnx, tmp_path / "nolabels.npz", make_profile(["graph_opt"]), tmp_path)
    report = compress(
        digits.onnx,
        tmp_path / "nolabels.npz",
        make_profile(["graph_opt"]),
        tmp_path / "cos",
        metric="cosine",
        latency_runs=2,
    )
    assert report.reference.metric == pytest.approx(1.0)
    np.savez(tmp_path / "flat.npz", inputs=np.zeros((10, 64), np.float32))
    with pytest.raises(InvalidInput, match="wants"):
        compress(digits.onnx, tmp_path / "flat.npz", make_profile(["graph_opt"]), tmp_path)


def test_reduce_range_follows_the_isa() -> None:
    profiles = load_profiles([builtin_profiles_dir()])
    assert needs_reduce_range(profiles["x86-edge"]) is False  # has AVX-VNNI
    assert needs_reduce_range(profiles["rpi4"]) is False  # not x86
    no_vnni = profiles["x86-edge"].model_copy(update={"isa_features": ["avx2", "fma"]})
    assert needs_reduce_range(no_vnni) is True


def test_local_latency_never_uses_more_threads_than_the_host_has(
    digits: Digits, tmp_path: Path
) -> None:
    import os

    from edgefleet.controller.compress import local_threads

    cores = len(os.sched_getaffinity(0))
    assert local_threads(0) == 0  # ONNX Runtime's own choice, as on the device
    assert local_threads(1) == 1
    assert local_threads(cores + 62) == cores
    profile = make_profile(["int8_dynamic"])
    profile = profile.model_copy(
        update={"runtime": profile.runtime.model_copy(update={"intra_op_threads": cores + 62})}
    )
    report = compress(digits.onnx, digits.eval_npz, profile, tmp_path, latency_runs=3)
    assert report.intra_op_threads == cores


def test_each_base_is_prepared_for_quantisation_once(
    digits: Digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxruntime.quantization import shape_inference

    calls: list[str] = []
    real = shape_inference.quant_pre_process

    def counting(source: str, *args: object, **kwargs: object) -> None:
        calls.append(source)
        real(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shape_inference, "quant_pre_process", counting)
    profile = make_profile(["int8_dynamic", "int8_static"])
    report = compress(digits.onnx, digits.eval_npz, profile, tmp_path, latency_runs=3)
    assert len(report.candidates) + len(report.skipped) == 1 + 1 + 6  # fp32, dyn, 6 static
    assert len(calls) == 1  # one base (fp32), shared by its seven int8 passes
    assert not list(tmp_path.glob("*.pre.onnx"))  # and removed afterwards
