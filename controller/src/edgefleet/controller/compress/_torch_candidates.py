"""The candidates made with the PyTorch model: structured pruning with a fine-tune, and
knowledge distillation, each exported to ONNX. torch is imported only when they run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._data import EvalData
from ._onnx_passes import Candidate, PassFailed
from ._options import PassOptions

if TYPE_CHECKING:
    import torch

    from ._compress import Progress

TORCH_PASSES = ("prune", "distill")


def torch_candidates(
    allowed: list[str],
    torch_model: torch.nn.Module | None,
    student: torch.nn.Module | None,
    train: EvalData,
    out_dir: Path,
    options: PassOptions,
    seed: int,
    notify: Progress,
    skipped: list[dict[str, str]],
) -> list[Candidate]:
    wanted = [p for p in TORCH_PASSES if p in allowed]
    if not wanted:
        return []
    if torch_model is None:
        skipped += [{"candidate": p, "why": "needs the PyTorch model"} for p in wanted]
        return []
    from . import _torch_passes as tp

    found: list[Candidate] = []
    example = train.inputs[:1]
    try:
        if "prune" in wanted:
            pruned = tp.prune_channels(
                torch_model,
                train,
                ratio=options.prune_ratio,
                epochs=options.prune_epochs,
                seed=seed,
                progress=lambda d, t: notify("prune: fine-tune", d, t),
            )
            cand = tp.export_onnx(
                pruned, example, out_dir / "pruned.onnx", input_name=train.input_name, name="pruned"
            )
            recipe = {
                "pass": "prune",
                "library": "torch-pruning",
                "importance": "magnitude-l1",
                "ratio": options.prune_ratio,
                "fine_tune_epochs": options.prune_epochs,
                "parameters": [tp.count_parameters(torch_model), tp.count_parameters(pruned)],
                "seed": seed,
            }
            found.append(Candidate(cand.name, cand.path, {"steps": [recipe]}))
        if "distill" in wanted:
            # without a given architecture the student is the pruned network, untrained
            base = student
            student_kind = "given"
            if base is None:
                base = tp.prune_channels(torch_model, train, ratio=options.prune_ratio, epochs=0)
                student_kind = f"pruned-{options.prune_ratio}"
            distilled = tp.distill(
                torch_model,
                base,
                train,
                temperature=options.distill_temperature,
                alpha=options.distill_alpha,
                epochs=options.distill_epochs,
                seed=seed,
                progress=lambda d, t: notify("distill", d, t),
            )
            cand = tp.export_onnx(
                distilled,
                example,
                out_dir / "distilled.onnx",
                input_name=train.input_name,
                name="distilled",
            )
            recipe = {
                "pass": "distill",
                "student": student_kind,
                "temperature": options.distill_temperature,
                "alpha": options.distill_alpha if train.labels is not None else 1.0,
                "hard_labels": train.labels is not None,
                "epochs": options.distill_epochs,
                "parameters": [tp.count_parameters(torch_model), tp.count_parameters(distilled)],
                "seed": seed,
            }
            found.append(Candidate(cand.name, cand.path, {"steps": [recipe]}))
    except PassFailed as exc:
        skipped.append({"candidate": "torch passes", "why": exc.message})
    return found
