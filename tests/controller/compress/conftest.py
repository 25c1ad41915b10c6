"""Fixtures for the compression tests: the digits CNN and a tiny BERT-style encoder, each
trained once per session, their ONNX exports, and the operator's ``eval.npz`` for each."""

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
from edgefleet.harness import (
    EncoderShape,
    digits_images,
    export_encoder,
    train_cnn,
    train_encoder,
    write_encoder_eval_npz,
    write_eval_npz,
)


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


@dataclass(frozen=True)
class Encoder:
    """A tiny BERT-style encoder (three int64 inputs, free batch and sequence axes), its
    ONNX export and the operator's unlabeled eval.npz of made-up sentences."""

    module: Any  # torch.nn.Module
    onnx: Path
    eval_npz: Path
    calibration: EvalData
    held_out: EvalData


TINY_ENCODER = EncoderShape(layers=2, hidden=64, heads=4, intermediate=128, vocab=500, max_len=64)


@pytest.fixture(scope="session")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    import os

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built from a config: nothing to fetch
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("encoder")
    module = train_encoder(TINY_ENCODER, steps=30, batch=16, seq=24, seed=0)
    path = export_encoder(module, root / "encoder.onnx")
    npz = write_encoder_eval_npz(root / "eval.npz", rows=48, seq=24, vocab=TINY_ENCODER.vocab)
    calibration, held_out = split_eval_data(load_eval_data(npz, path), 0.5, seed=0)
    return Encoder(module, path, npz, calibration, held_out)


def cosine_profile(passes: list[str], **settings: Any) -> DeviceProfile:
    """An arm64 board's profile for the encoder: cosine budgets on the mean and worst row."""
    limits = {"max_size_bytes": 100_000_000, "max_latency_ms": 1000.0,
              "max_accuracy_drop": 0.01, "max_worst_drop": 0.02}  # fmt: skip
    limits.update(settings.pop("budgets", {}))
    return DeviceProfile.model_validate(
        {
            "name": "test-board",
            "arch": "arm64",
            "isa_features": ["neon", "dotprod"],
            "cores": 2,
            "ram_mb": 1024,
            "runtime": {"intra_op_threads": 1, "inter_op_threads": 1},
            "budgets": limits,
            "compression": {"passes": passes, **settings},
        }
    )
