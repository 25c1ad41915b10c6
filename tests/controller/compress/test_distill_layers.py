"""Distillation of the tiny encoder into a student with every other layer of the teacher,
trained on unlabeled rows to give the teacher's embeddings; and `compress` with `--torch`
on a multi-input model: the student is a base for the quantisation passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.controller.compress import (
    PassOptions,
    compress,
    cosine_rows,
    distill_outputs,
    layer_stack,
    shallow_student,
)
from edgefleet.controller.compress._measure import open_session, run_outputs
from edgefleet.shared.errors import ConfigError

from .conftest import TINY_ENCODER, Encoder, cosine_profile


def test_the_student_keeps_every_other_layer_from_the_teacher(encoder: Encoder) -> None:
    import torch

    student = shallow_student(encoder.module, 2)
    (_, name, stack) = layer_stack(student)
    assert name == "layer" and len(stack) == TINY_ENCODER.layers // 2
    teacher_last = layer_stack(encoder.module)[2][-1]
    for a, b in zip(stack[-1].parameters(), teacher_last.parameters(), strict=True):
        assert torch.equal(a, b)  # started from the teacher's own weights
    assert len(layer_stack(encoder.module)[2]) == TINY_ENCODER.layers  # the teacher is intact
    with pytest.raises(ConfigError, match="at least 2"):
        shallow_student(encoder.module, 1)


def test_distillation_brings_the_student_closer_to_the_teacher(encoder: Encoder) -> None:
    import torch

    student = shallow_student(encoder.module, 2)
    trained = distill_outputs(encoder.module, student, encoder.calibration, epochs=8, lr=1e-3)
    feeds = {k: torch.from_numpy(v) for k, v in encoder.held_out.feeds.items()}
    with torch.no_grad():
        teacher = encoder.module(*feeds.values()).numpy()
        before = student(*feeds.values()).numpy()
        after = trained(*feeds.values()).numpy()
    assert np.mean(cosine_rows(after, teacher)) > np.mean(cosine_rows(before, teacher))


def test_compress_distils_a_multi_input_model_and_quantises_the_student(
    encoder: Encoder, tmp_path: Path
) -> None:
    profile = cosine_profile(
        ["prune", "distill", "int8_dynamic"], budgets={"max_accuracy_drop": 1.0,
                                                      "max_worst_drop": 1.0},
    )  # fmt: skip
    report = compress(
        encoder.onnx, encoder.eval_npz, profile, tmp_path, metric="cosine",
        torch_model=encoder.module, options=PassOptions(distill_epochs=2, per_channel=(False,)),
        latency_runs=2,
    )  # fmt: skip
    names = {c.name for c in report.candidates}
    assert {"distilled", "distilled.int8dyn"} <= names
    assert [s["candidate"] for s in report.skipped] == ["prune"]  # CNNs only
    distilled = next(c for c in report.candidates if c.name == "distilled")
    step = distilled.recipe["steps"][0]
    assert step["layers"] == [TINY_ENCODER.layers, TINY_ENCODER.layers // 2]
    assert distilled.size_bytes < report.reference.size_bytes
    # the student keeps the reference's inputs and its free sequence axis
    session = open_session(tmp_path / "distilled.onnx", 1)
    assert [i.name for i in session.get_inputs()] == list(encoder.held_out.feeds)
    short = type(encoder.held_out)({k: v[:3, :9] for k, v in encoder.held_out.feeds.items()})
    assert run_outputs(session, short).shape == (3, TINY_ENCODER.hidden)
