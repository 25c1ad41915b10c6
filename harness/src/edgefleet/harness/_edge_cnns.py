"""The classic edge CNN of the compression literature, MobileNet-v3-Small, re-implemented
compactly in torch (torchvision's own build does not import beside the pinned torch): its
inverted-residual blocks with squeeze-and-excitation and hard-swish, its stem and head,
the published block table. Trained briefly on scikit-learn's digits scaled to 32x32, for
the compression benchmark and tests. torch is imported only when a network is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._digits_cnn import TRAIN_ROWS, digits_images

EDGE_IMAGE = 32
# MobileNet-v3-Small (Howard et al. 2019, table 2): kernel, expansion, out, SE, activation, stride
MOBILENET_V3_SMALL = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1),
    (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1),
    (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
)


def edge_images() -> tuple[np.ndarray, np.ndarray]:
    """The digits, 32x32 (each pixel repeated 4x4), one channel."""
    x, y = digits_images()
    return np.kron(x, np.ones((1, 1, 4, 4), np.float32)), y


def build_mobilenet_v3_small(classes: int = 10, in_channels: int = 1) -> Any:  # nn.Module
    import torch.nn as nn

    def act(kind: str) -> nn.Module:
        return nn.Hardswish() if kind == "hswish" else nn.ReLU()

    class SqueezeExcite(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            squeezed = max(8, (channels // 4 + 4) // 8 * 8)
            self.gate = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(channels, squeezed, 1),
                nn.ReLU(),
                nn.Conv2d(squeezed, channels, 1),
                nn.Hardsigmoid(),
            )

        def forward(self, x: Any) -> Any:
            return x * self.gate(x)

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, k: int, exp: int, out: int, se: bool, a: str, s: int):
            super().__init__()
            layers: list[nn.Module] = []
            if exp != cin:
                layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act(a)]
            layers += [
                nn.Conv2d(exp, exp, k, s, k // 2, groups=exp, bias=False),
                nn.BatchNorm2d(exp),
                act(a),
            ]
            if se:
                layers.append(SqueezeExcite(exp))
            layers += [nn.Conv2d(exp, out, 1, bias=False), nn.BatchNorm2d(out)]
            self.block = nn.Sequential(*layers)
            self.residual = s == 1 and cin == out

        def forward(self, x: Any) -> Any:
            y = self.block(x)
            return x + y if self.residual else y

    blocks: list[nn.Module] = [
        nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.Hardswish(),
    ]
    channels = 16
    for k, exp, out, se, a, s in MOBILENET_V3_SMALL:
        blocks.append(InvertedResidual(channels, k, exp, out, se, a, s))
        channels = out
    blocks += [nn.Conv2d(channels, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish()]
    return nn.Sequential(
        *blocks,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(576, 1024),
        nn.Hardswish(),
        nn.Dropout(0.2),
        nn.Linear(1024, classes),
    )


def train_mobilenet(seed: int = 0, epochs: int = 4) -> Any:  # nn.Module
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    x, y = edge_images()
    inputs, labels = torch.from_numpy(x[:TRAIN_ROWS]), torch.from_numpy(y[:TRAIN_ROWS])
    model = build_mobilenet_v3_small()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), 64):
            rows = order[start : start + 64]
            optimiser.zero_grad()
            F.cross_entropy(model(inputs[rows]), labels[rows]).backward()
            optimiser.step()
    return model.eval()


def write_edge_eval_npz(path: Path) -> Path:
    x, y = edge_images()
    np.savez(path, inputs=x[TRAIN_ROWS:], labels=y[TRAIN_ROWS:])
    return path
