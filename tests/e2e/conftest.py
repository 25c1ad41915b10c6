"""Agents as real subprocesses against the private broker and artifact server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.harness import AgentProcess, ArtifactServer, Broker, Observer, Operator


@pytest.fixture
def make_agent(
    tmp_path: Path,
    broker: Broker,
    artifact_server: ArtifactServer,
    operator: Operator,
    observer: Observer,
) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def make(device_id: str = "dev-1", start: bool = True, **settings: Any) -> AgentProcess:
        agent = AgentProcess(
            tmp_path / device_id,
            device_id,
            broker.url,
            artifact_server.base_url,
            [operator.public_text],
            **settings,
        )
        agents.append(agent)
        if start:
            # online means subscribed: a command sent after this is not lost
            mark = observer.mark()
            agent.start()
            observer.wait_for(
                lambda m: m.kind == "status" and m.device_id == device_id and m.online,
                timeout=30,
                since=mark,
            )
        return agent

    yield make
    for agent in agents:
        agent.stop()
