"""Fixtures for real services: a private Mosquitto, an artifact server, an operator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.harness import ArtifactServer, Broker, Observer, Operator


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "mosquitto").start()
    yield b
    b.stop(kill=True)


@pytest.fixture
def artifact_server(tmp_path: Path) -> Iterator[ArtifactServer]:
    root = tmp_path / "artifacts"
    root.mkdir()
    server = ArtifactServer(root=root).start()
    yield server
    server.stop()


@pytest.fixture
def operator(broker: Broker, artifact_server: ArtifactServer) -> Iterator[Operator]:
    op = Operator(broker.url, artifact_server.root)
    yield op
    op.close()


@pytest.fixture
def observer(broker: Broker) -> Iterator[Observer]:
    obs = Observer(broker.url)
    yield obs
    obs.close()
