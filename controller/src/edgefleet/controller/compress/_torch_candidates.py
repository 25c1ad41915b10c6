"""The candidates made with the PyTorch model: structured pruning with a fine-tune, and
knowledge distillation, each exported to ONNX. torch is imported only when they run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._data import EvalData, model_inputs
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
    reference: Path | None = None,
) -> list[Candidate]:
    wanted = [p for p in TORCH_PASSES if p in allowed]
    if not wanted:
        return []
    if torch_model is None:
        skipped += [{"candidate": p, "why": "needs the PyTorch model"} for p in wanted]
        return []
    if len(train.feeds) > 1:
        if "prune" in wanted:
            why = f"channel pruning takes one-input CNNs; this model has {len(train.feeds)} inputs"
            skipped.append({"candidate": "prune", "why": why})
        if "distill" not in wanted or reference is None:
            return []
        try:
            return [_layer_distilled(torch_model, student, train, out_dir, options, seed,
                                     notify, reference)]  # fmt: skip
        except PassFailed as exc:
            skipped.append({"candidate": "distill", "why": exc.message})
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


def _layer_distilled(
    teacher: torch.nn.Module,
    student: torch.nn.Module | None,
    train: EvalData,
    out_dir: Path,
    options: PassOptions,
    seed: int,
    notify: Progress,
    reference: Path,
) -> Candidate:
    """A multi-input model (a transformer) distilled into a student with every other layer
    of the teacher's stack (or the given student), on the unlabeled calibration rows."""
    import onnxruntime as ort

    from . import _distill_layers as dl
    from ._torch_passes import count_parameters

    base = student if student is not None else dl.shallow_student(teacher, 2)
    layers = len(dl.layer_stack(base)[2]), len(dl.layer_stack(teacher)[2])
    trained = dl.distill_outputs(
        teacher, base, train, epochs=options.distill_epochs, lr=options.distill_lr, seed=seed,
        progress=lambda d, t: notify("distill", d, t),
    )  # fmt: skip
    session = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    cand = dl.export_like(
        trained, train, model_inputs(reference), outputs, out_dir / "distilled.onnx",
        name="distilled",
    )  # fmt: skip
    recipe = {
        "pass": "distill",
        "student": "given" if student is not None else "every-other-layer",
        "layers": [layers[1], layers[0]],
        "loss": "mse+cosine to the teacher's output",
        "epochs": options.distill_epochs,
        "lr": options.distill_lr,
        "rows": len(train),
        "parameters": [count_parameters(teacher), count_parameters(trained)],
        "seed": seed,
    }
    return Candidate(cand.name, cand.path, {"steps": [recipe]})
