"""Fixtures for the agent tests: real digits models, a fleet of one in-process, and an agent
in-process on its production MQTT link and HTTP client (with the real broker and artifact
server of tests/conftest.py, the artifact server behind a gate that can refuse connections)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent import Agent, AgentConfig
from edgefleet.agent._connections import artifact_client, broker_link
from edgefleet.agent._death_test import DeathTestPause
from edgefleet.agent._retry import DownloadRetry
from edgefleet.harness import ArtifactServer, Broker, Observer, Operator, write_digits_model

from .gate import Gate
from .inprocess import Fleet

OUTAGE_DEVICE = "pi-outage"


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {f"v{i}": write_digits_model(root / f"v{i}.onnx", seed=i) for i in (1, 2, 3)}


@pytest.fixture
def fleet(tmp_path: Path, digits_models: dict[str, Path]) -> Iterator[Fleet]:
    f = Fleet(tmp_path, digits_models)
    yield f
    f.close()


@pytest.fixture
def gate(artifact_server: ArtifactServer) -> Iterator[Gate]:
    g = Gate(artifact_server.port)  # closed: the server is down until a test opens it
    yield g
    g.close()


@pytest.fixture
def start_agent(
    tmp_path: Path, broker: Broker, operator: Operator, observer: Observer
) -> Iterator[Callable[..., Agent]]:
    """Start an agent for ``OUTAGE_DEVICE`` (again on the same state folder: a restart), as
    ``Agent.from_config`` builds it; ``retry`` and ``pause`` replace the download retry
    policy and add a death-test pause."""
    agents: list[Agent] = []

    def start(
        artifact_base_url: str,
        *,
        retry: DownloadRetry | None = None,
        pause: DeathTestPause | None = None,
        **settings: Any,
    ) -> Agent:
        values: dict[str, Any] = {
            "device_id": OUTAGE_DEVICE,
            "broker_url": broker.url,
            "artifact_base_url": artifact_base_url,
            "trusted_keys": (operator.public_text,),
            "state_dir": tmp_path / "agent",
            "inference_port": 0,
            "telemetry_interval_s": 60.0,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "download_timeout_s": 5.0,
            "download_retry_s": 0.05,
            "download_retry_max_s": 0.2,
        }
        config = AgentConfig(**{**values, **settings})
        agent = Agent(
            config,
            http=artifact_client(config),
            link=broker_link(config),
            retry=retry,
            death_test_pause=pause,
        )
        since = observer.mark()
        agent.start()
        agents.append(agent)
        # the retained birth reaches the observer once both are in: nothing said is missed
        observer.wait_for(
            lambda m: m.kind == "status" and m.device_id == OUTAGE_DEVICE and m.online,
            since=since,
        )
        return agent

    yield start
    for agent in agents:
        agent.stop()
