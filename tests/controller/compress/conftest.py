"""Fixtures for the compression tests: the digits CNN, trained once per session, its ONNX
export, and the operator's ``eval.npz`` (the digits it was not trained on)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.controller.compress import (
    EvalData,
    export_onnx,
    load_eval_data,
    split_eval_data,
)
from edgefleet.controller.home import DeviceProfile
from edgefleet.harness import digits_images, train_cnn, write_eval_npz


@dataclass(frozen=True)
class Digits:
    module: Any  # torch.nn.Module
    onnx: Path
    eval_npz: Path
    calibration: EvalData
    held_out: EvalData


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    import torch

    # one thread: small-batch training is no faster on more, and it degrades badly when
    # the CPU is shared with other test processes
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("digits")
    module = train_cnn(seed=0)
    x, _ = digits_images()
    reference = export_onnx(module, x, root / "digits.onnx", input_name="input", name="digits")
    npz = write_eval_npz(root / "eval.npz")
    calibration, held_out = split_eval_data(load_eval_data(npz, reference.path), 0.5, seed=0)
    return Digits(module, reference.path, npz, calibration, held_out)


def make_profile(passes: list[str], **budgets: float) -> DeviceProfile:
    limits = {"max_size_bytes": 10_000_000, "max_latency_ms": 1000.0, "max_accuracy_drop": 0.02}
    limits.update(budgets)
    return DeviceProfile.model_validate(
        {
            "name": "test-box",
            "arch": "x86_64",
            "isa_features": ["avx2", "avx-vnni"],
            "cores": 2,
            "ram_mb": 1024,
            "runtime": {"intra_op_threads": 1, "inter_op_threads": 1},
            "budgets": limits,
            "compression": {"passes": passes},
        }
    )
