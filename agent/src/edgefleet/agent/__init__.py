"""The edgefleet device agent: verify, hot-swap and serve ONNX models; report telemetry.

Importing this package loads nothing heavy: the runtime and MQTT parts load
when :class:`Agent` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import AgentConfig, load_config
from ._lifecycle import TRANSITIONS, DeploymentRecord, Outcome, State, drive, next_state
from ._link import Inbound, Link, Outbound

if TYPE_CHECKING:
    from ._agent import Agent

__version__ = "0.1.0"

__all__ = [
    "TRANSITIONS",
    "Agent",
    "AgentConfig",
    "DeploymentRecord",
    "Inbound",
    "Link",
    "Outbound",
    "Outcome",
    "State",
    "drive",
    "load_config",
    "next_state",
]


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from ._agent import Agent

        return Agent
    raise AttributeError(name)
