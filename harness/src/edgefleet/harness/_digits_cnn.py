"""A small CNN trained on scikit-learn's bundled digits (8x8, one channel), for the
compression tests, benchmarks and the demo. Trained in seconds with a fixed seed; torch
is imported only when a CNN is built (it comes with `edgefleet-controller[compress]`)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

TRAIN_ROWS = 1200  # the rest of the 1797 digits are the operator's eval.npz


@functools.cache
def digits_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    return x, data.target.astype(np.int64)


def build_cnn(width: int = 32, hidden: int = 128):  # -> torch.nn.Module
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 16, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def train_cnn(seed: int = 0, epochs: int = 8, width: int = 32, hidden: int = 128):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    x, y = digits_images()
    inputs, labels = torch.from_numpy(x[:TRAIN_ROWS]), torch.from_numpy(y[:TRAIN_ROWS])
    model = build_cnn(width, hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), 32):
            rows = order[start : start + 32]
            optimiser.zero_grad()
            F.cross_entropy(model(inputs[rows]), labels[rows]).backward()
            optimiser.step()
    return model.eval()


def write_eval_npz(path: Path, with_labels: bool = True) -> Path:
    x, y = digits_images()
    if with_labels:
        np.savez(path, inputs=x[TRAIN_ROWS:], labels=y[TRAIN_ROWS:])
    else:
        np.savez(path, inputs=x[TRAIN_ROWS:])
    return path
