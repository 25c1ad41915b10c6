"""The seam between the agent and its broker: messages in and out, and what a link must do.

Light on purpose (no paho here): tests pass their own link, and importing the
package stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Inbound:
    """A message from the broker: its topic, its bytes, and how to acknowledge it."""

    topic: str
    payload: bytes
    ack: Callable[[], None]


@dataclass(frozen=True)
class Outbound:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Link(Protocol):
    """What the agent needs from its broker connection; tests pass a fake that records."""

    def start(
        self,
        *,
        on_message: Callable[[Inbound], None],
        birth: Callable[[], Outbound],
        will: Callable[[], Outbound],
    ) -> None:
        """Connect (and keep reconnecting); ``birth`` and ``will`` are built at each connect."""

    def publish(self, message: Outbound) -> None: ...

    def stop(self, farewell: Outbound | None = None) -> None: ...
