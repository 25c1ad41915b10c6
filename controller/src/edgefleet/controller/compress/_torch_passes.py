"""Compression passes that need the PyTorch model: structured channel pruning with a short
fine-tune, knowledge distillation into a smaller student, and export to ONNX.

torch is imported inside the functions: importing edgefleet must never load it."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.shared.errors import ConfigError

from .._text import first_line
from ._data import EvalData
from ._onnx_passes import Candidate, PassFailed

if TYPE_CHECKING:
    import torch

OPSET = 17
Progress = Callable[[int, int], None]


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prune_channels(
    module: torch.nn.Module,
    train: EvalData,
    *,
    ratio: float = 0.5,
    epochs: int = 20,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.nn.Module:
    """A copy of ``module`` with ``ratio`` of the channels of every conv/linear layer removed
    (smallest L1 norm first, via torch-pruning, so kernels really shrink), then fine-tuned on
    ``train``: cross-entropy on its labels, or matching the original's outputs without them.
    The output layer keeps all its units."""
    import torch
    import torch_pruning as tp

    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"pruning ratio must be in (0, 1), not {ratio}")
    torch.manual_seed(seed)
    original = module.eval()
    pruned = copy.deepcopy(module).eval()
    example = torch.from_numpy(train.inputs[:1])
    output_layers = _output_layers(pruned, example)
    try:
        pruner = tp.pruner.MetaPruner(
            pruned,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=output_layers,
        )
        pruner.step()
    except Exception as exc:  # torch-pruning raises what its graph tracing meets
        raise PassFailed(f"channel pruning failed: {first_line(exc)}") from exc
    if train.labels is not None:
        loss_fn = _hard_label_loss
    else:
        with torch.no_grad():
            targets = original(torch.from_numpy(train.inputs))
        loss_fn = _matching_loss(targets)
    _fit(pruned, train, loss_fn, epochs=epochs, lr=lr, seed=seed, progress=progress)
    return pruned.eval()


def distill(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    train: EvalData,
    *,
    temperature: float = 4.0,
    alpha: float = 0.7,
    epochs: int = 30,
    lr: float = 2e-3,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.nn.Module:
    """Train a copy of ``student`` to imitate ``teacher``: KL divergence between their
    temperature-softened logits (scaled by T², Hinton et al.), weighted ``alpha``, plus
    cross-entropy on the hard labels, weighted ``1 - alpha``, when the data has labels."""
    import torch
    import torch.nn.functional as F

    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be positive, not {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distillation alpha must be in [0, 1], not {alpha}")
    torch.manual_seed(seed)
    student = copy.deepcopy(student)
    with torch.no_grad():
        soft = teacher.eval()(torch.from_numpy(train.inputs))
    weight = alpha if train.labels is not None else 1.0

    def loss_fn(out: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        kd = F.kl_div(
            F.log_softmax(out / temperature, dim=1),
            F.log_softmax(soft[rows] / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (temperature**2)
        if labels is None:
            return kd
        return weight * kd + (1.0 - weight) * F.cross_entropy(out, labels)

    _fit(student, train, loss_fn, epochs=epochs, lr=lr, seed=seed, progress=progress)
    return student.eval()


def export_onnx(
    module: torch.nn.Module, example: np.ndarray, path: Path, *, input_name: str, name: str
) -> Candidate:
    """``module`` as an ONNX file (opset 17) whose batch dimension is free, with the same
    input name as the reference so the evaluation data feeds both."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            # the torch.export-based exporter needs onnxscript, which edgefleet does not
            # depend on; the TorchScript exporter still writes opset 17 correctly
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module.eval(),
                (torch.from_numpy(example[:1]),),
                str(path),
                input_names=[input_name],
                output_names=["output"],
                dynamic_axes={input_name: {0: "batch"}, "output": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated classes
        raise PassFailed(f"ONNX export of {name} failed: {first_line(exc)}") from exc
    return Candidate(name=name, path=path, recipe={"steps": []})


def _output_layers(module: torch.nn.Module, example: torch.Tensor) -> list[torch.nn.Module]:
    """The layers whose outputs are the model's outputs, found by which one ran last."""
    import torch

    order: list[torch.nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear | torch.nn.Conv1d)
    ]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]


def _hard_label_loss(out: Any, _rows: Any, labels: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(out, labels)


def _matching_loss(targets: Any) -> Callable[..., Any]:
    import torch.nn.functional as F

    def loss(out: Any, rows: Any, _labels: Any) -> Any:
        return F.mse_loss(out, targets[rows])

    return loss


def _fit(
    module: torch.nn.Module,
    train: EvalData,
    loss_fn: Callable[..., Any],
    *,
    epochs: int,
    lr: float,
    seed: int,
    progress: Progress | None,
    batch: int = 32,
) -> None:
    import torch

    inputs = torch.from_numpy(train.inputs)
    labels = None if train.labels is None else torch.from_numpy(train.labels)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for epoch in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            optimiser.zero_grad()
            out = module(inputs[rows])
            loss = loss_fn(out, rows, None if labels is None else labels[rows])
            loss.backward()
            optimiser.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    module.eval()
