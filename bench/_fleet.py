"""A small fleet on this machine for benchmarks and the demo: broker, artifact server,
operator, observer and agent subprocesses (the same parts the tests use)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.artifacts import ArtifactServer  # noqa: E402
from tests.support.broker import Broker, free_port, wait_port  # noqa: E402
from tests.support.controller import ControllerFleet, wait_until  # noqa: E402
from tests.support.fleet import AgentProcess, Observer, Operator  # noqa: E402
from tests.support.models import digits, write_digits_model  # noqa: E402

__all__ = [
    "REPO",
    "Broker",
    "ControllerFleet",
    "LocalFleet",
    "Observer",
    "digits",
    "free_port",
    "rss_bytes",
    "wait_port",
    "wait_until",
    "write_digits_model",
]


class LocalFleet:
    def __init__(self, workdir: Path | None = None) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="edgefleet-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.broker = Broker(self.workdir / "mosquitto").start()
        (self.workdir / "artifacts").mkdir(exist_ok=True)
        self.artifacts = ArtifactServer(root=self.workdir / "artifacts").start()
        self.operator = Operator(self.broker.url, self.artifacts.root)
        self.observer = Observer(self.broker.url)
        self.agents: list[AgentProcess] = []

    def agent(self, device_id: str, **settings: object) -> AgentProcess:
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
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
