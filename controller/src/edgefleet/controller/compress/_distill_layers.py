"""Distillation of a model with several inputs (a transformer) into a shallower student:
the teacher's stack of identical layers thinned to every other one (the student starts
from the teacher's own weights), then trained on the operator's unlabeled rows to give the
teacher's outputs, and exported with the reference's input and output names and free axes.

torch is imported inside the functions: importing edgefleet must never load it."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.shared.errors import ConfigError

from .._text import first_line
from ._data import EvalData, ModelInput
from ._onnx_passes import Candidate, PassFailed

if TYPE_CHECKING:
    import torch

OPSET = 17
Progress = Callable[[int, int], None]


def layer_stack(module: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """The longest ``ModuleList`` of same-typed blocks (a transformer's layers): its
    parent, its attribute name and the list."""
    import torch

    best: tuple[torch.nn.Module, str, torch.nn.ModuleList] | None = None
    for parent in module.modules():
        for name, child in parent.named_children():
            if not isinstance(child, torch.nn.ModuleList) or not len(child):
                continue
            if len({type(m) for m in child}) != 1:
                continue
            if best is None or len(child) > len(best[2]):
                best = (parent, name, child)
    if best is None:
        raise PassFailed("layer distillation needs a stack of identical layers (a ModuleList)")
    return best


def shallow_student(teacher: torch.nn.Module, keep_every: int = 2) -> torch.nn.Module:
    """A copy of ``teacher`` keeping every ``keep_every``-th layer of its layer stack,
    ending with the last (k-1, 2k-1, …), initialised from the teacher's weights."""
    import torch

    if keep_every < 2:
        raise ConfigError(f"keep_every must be at least 2, not {keep_every}")
    student = copy.deepcopy(teacher)
    parent, name, stack = layer_stack(student)
    keep = list(range(keep_every - 1, len(stack), keep_every)) or [len(stack) - 1]
    setattr(parent, name, torch.nn.ModuleList([stack[i] for i in keep]))
    config = getattr(student, "config", None) or getattr(parent, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(keep)
    return student.eval()


def distill_outputs(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    train: EvalData,
    *,
    epochs: int = 30,
    lr: float = 1e-4,
    batch: int = 16,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.nn.Module:
    """Train ``student`` to give ``teacher``'s first output on ``train``'s rows (its inputs
    passed in the model's input order; labels unused): mean squared error plus one minus
    the cosine similarity, so both the direction and the scale of an embedding match."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    feeds = {k: torch.from_numpy(v) for k, v in train.feeds.items()}
    with torch.no_grad():
        targets = _first(teacher.eval()(*feeds.values()))
    student = copy.deepcopy(student)
    optimiser = torch.optim.AdamW(student.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    student.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            out = _first(student(*(v[rows] for v in feeds.values())))
            want = targets[rows]
            flat, flat_want = out.reshape(len(rows), -1), want.reshape(len(rows), -1)
            loss = (
                F.mse_loss(flat, flat_want)
                + (1 - F.cosine_similarity(flat, flat_want, dim=1)).mean()
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    return student.eval()


def export_like(
    module: torch.nn.Module,
    example: EvalData,
    specs: Sequence[ModelInput],
    output_names: Sequence[str],
    path: Path,
    *,
    name: str,
) -> Candidate:
    """``module`` as ONNX with the reference's input and output names, its inputs' free
    axes kept free (batch and sequence), the outputs' batch axis free."""
    import torch

    axes: dict[str, dict[int, str]] = {
        spec.name: {
            axis: (dim if isinstance(dim, str) else f"{spec.name}_{axis}")
            for axis, dim in enumerate(spec.shape)
            if not isinstance(dim, int)
        }
        for spec in specs
    }
    for out in output_names:
        axes[out] = {0: "batch"}
    args = tuple(torch.from_numpy(example.feeds[s.name][:2]) for s in specs)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                input_names=[s.name for s in specs],
                output_names=list(output_names),
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated classes
        raise PassFailed(f"ONNX export of {name} failed: {first_line(exc)}") from exc
    return Candidate(name=name, path=path, recipe={"steps": []})


def _first(out: Any) -> Any:
    if isinstance(out, tuple | list):
        return out[0]
    if isinstance(out, dict):
        return next(iter(out.values()))
    return getattr(out, "last_hidden_state", out)
