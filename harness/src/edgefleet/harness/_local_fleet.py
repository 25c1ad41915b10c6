"""A small fleet on this machine for the agent benchmarks: broker, artifact server,
operator, observer and agent subprocesses (the same parts the tests use)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from ._artifacts import ArtifactServer
from ._broker import Broker
from ._fleet import AgentProcess, Observer, Operator


class LocalFleet:
    """A broker, an artifact server, an operator and an observer in ``workdir`` (or a
    temporary folder removed on ``close``), and the agents started in it."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="edgefleet-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.broker = Broker(self.workdir / "mosquitto").start()
        (self.workdir / "artifacts").mkdir(exist_ok=True)
        self.artifacts = ArtifactServer(root=self.workdir / "artifacts").start()
        self.operator = Operator(self.broker.url, self.artifacts.root)
        self.observer = Observer(self.broker.url)
        self.agents: list[AgentProcess] = []

    def agent(self, device_id: str, **settings: Any) -> AgentProcess:
        agent = AgentProcess(
            self.workdir / device_id,
            device_id,
            self.broker.url,
            self.artifacts.base_url,
            [self.operator.public_text],
            **settings,
        )
        self.agents.append(agent)
        return agent

    def start(self, agent: AgentProcess, timeout: float = 30.0) -> float:
        """Start an agent and wait until it is online (subscribed); returns the seconds taken."""
        mark = self.observer.mark()
        t0 = time.monotonic()
        agent.start()
        self.observer.wait_for(
            lambda m: m.kind == "status" and m.device_id == agent.device_id and m.online,
            timeout=timeout,
            since=mark,
        )
        return time.monotonic() - t0

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.observer.close()
        self.operator.close()
        self.artifacts.stop()
        self.broker.stop()
        if self._tmp:
            self._tmp.cleanup()


def rss_bytes(pid: int) -> int:
    """A process's resident memory, from /proc (0 when the kernel does not say)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
