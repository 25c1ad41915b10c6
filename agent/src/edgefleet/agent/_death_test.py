"""A test-only hook that holds the agent in a named state so a death test can SIGKILL it there.

Never for production: it is honoured only when both variables are set, e.g.
``EDGEFLEET_AGENT_TEST_MODE=1 EDGEFLEET_AGENT_TEST_PAUSE_IN=loading:30``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from ._lifecycle import State

log = logging.getLogger("edgefleet.agent")

TEST_MODE_ENV = "EDGEFLEET_AGENT_TEST_MODE"
PAUSE_ENV = "EDGEFLEET_AGENT_TEST_PAUSE_IN"


@dataclass(frozen=True)
class DeathTestPause:
    """Hold for ``seconds`` each time a deployment is saved in ``state``."""

    state: State
    seconds: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DeathTestPause | None:
        text = env.get(PAUSE_ENV, "")
        if not text:
            return None
        if env.get(TEST_MODE_ENV) != "1":
            log.warning("%s ignored: it is a test hook and %s is not 1", PAUSE_ENV, TEST_MODE_ENV)
            return None
        name, _, seconds = text.partition(":")
        try:
            return cls(State(name), float(seconds or 30))
        except ValueError:
            log.warning("%s=%r ignored: expected STATE:SECONDS", PAUSE_ENV, text)
            return None
