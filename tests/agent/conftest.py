"""Fixtures for the in-process agent tests: real digits models and a fleet of one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.harness import write_digits_model

from .inprocess import Fleet


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {f"v{i}": write_digits_model(root / f"v{i}.onnx", seed=i) for i in (1, 2, 3)}


@pytest.fixture
def fleet(tmp_path: Path, digits_models: dict[str, Path]) -> Iterator[Fleet]:
    f = Fleet(tmp_path, digits_models)
    yield f
    f.close()
