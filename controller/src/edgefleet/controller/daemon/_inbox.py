"""From the broker to the registry: what devices send is decoded against the bounds in
``shared``, rate-limited per device, stored a batch per transaction, and acknowledged.

One device must never stall ingest for the others. A message that is invalid, over its
device's rate, or that the registry refuses even on its own, is a *dead letter*: logged
once, counted in ``/metrics`` (``edgefleet_messages_dead_lettered_total{reason}``) and
acknowledged, so the broker does not deliver it again and its in-flight window to the
controller never fills with it. Only when the registry itself is unreachable is nothing
acknowledged: the broker keeps those messages until the registry is back.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import text
from sqlmodel import Session

from edgefleet import shared
from edgefleet.shared import EventMessage, StatusMessage, TelemetryMessage
from edgefleet.shared.errors import EdgefleetError, MessageError

from .._text import first_line
from ..home import Home
from ..mqtt import Received
from ._ingest import Inbound, ingest_many
from ._metrics import Metrics

log = logging.getLogger("edgefleet.controller.ingest")

# Waits between tries while the registry cannot be reached at all.
REGISTRY_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class DeadLetter(StrEnum):
    """Why a message was acknowledged without being stored."""

    INVALID = "invalid"  # not a message, or outside the bounds in shared
    RATE_LIMITED = "rate_limited"  # its device sent more than its share
    UNSTORABLE = "unstorable"  # the registry refused it, alone, while it took others


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per device: ``burst`` messages at once, ``per_s`` a second after that."""

    per_s: float
    burst: int


class DeviceRates:
    """Token buckets for the devices heard from lately (at most ``max_devices``, least
    recently heard forgotten first, so a flood of made-up device ids cannot grow it)."""

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_devices: int = 100_000,
    ) -> None:
        self.limit = limit
        self.clock = clock
        self.max_devices = max_devices
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def allow(self, device: str) -> bool:
        now = self.clock()
        tokens, at = self._buckets.pop(device, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - at) * self.limit.per_s)
        allowed = tokens >= 1.0
        self._buckets[device] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_devices:
            self._buckets.popitem(last=False)
        return allowed


@dataclass(frozen=True)
class _Decoded:
    item: Received
    device: str
    message: Inbound


class Inbox:
    """Writes batches of received messages into the registry and acknowledges them."""

    def __init__(
        self,
        home: Home,
        metrics: Metrics,
        ack: Callable[[Received], None],
        rates: DeviceRates,
        *,
        store: Callable[[Session, list[tuple[str, Inbound]]], object] = ingest_many,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.home = home
        self.store = store
        self.metrics = metrics
        self.ack = ack
        self.rates = rates
        self.now = now
        self.sleep = sleep
        self.prefix = home.settings.topic_prefix
        self._limited: set[str] = set()  # devices whose rate-limiting was logged

    def write(self, batch: list[Received]) -> None:
        decoded = [d for d in (self._decode(item) for item in batch) if d is not None]
        if not decoded:
            return
        for pause in (*REGISTRY_RETRY_S, None):
            if self._store(decoded):
                self._stored(decoded)
                return
            left = self._one_by_one(decoded)
            if len(left) < len(decoded) or self._registry_answers():
                for d, why in left:  # refused alone while others went in: the message's fault
                    self._dead(d.item, d.device, DeadLetter.UNSTORABLE, why)
                return
            if pause is None:
                break
            log.error("the registry cannot be reached; trying again in %g s", pause)
            self.sleep(pause)
        # not acknowledged: the broker delivers them again after the next connect
        log.error("the registry stayed unreachable; %d message(s) left unacknowledged", len(left))

    # -- steps -------------------------------------------------------------------------

    def _decode(self, item: Received) -> _Decoded | None:
        device = "?"
        try:
            device, _channel = shared.parse_topic(item.topic, self.prefix)
            message = shared.decode(item.payload, now=self.now())
            if not isinstance(message, StatusMessage | EventMessage | TelemetryMessage):
                raise MessageError(f"unexpected {message.kind} message")
        except MessageError as exc:
            self._dead(item, device, DeadLetter.INVALID, exc.message)
            return None
        if not self.rates.allow(device):
            if device not in self._limited:
                self._limited.add(device)
                log.warning("device %s is over its message rate; dropping until it slows", device)
            self._dead(item, device, DeadLetter.RATE_LIMITED, "", quiet=True)
            return None
        self._limited.discard(device)
        return _Decoded(item, device, message)

    def _store(self, decoded: list[_Decoded]) -> bool:
        try:
            with self.home.session(write=True) as session:
                self.store(session, [(d.device, d.message) for d in decoded])
        except Exception as exc:  # a bug in one message's handling must not stop ingest
            log.debug("storing a batch of %d failed: %s", len(decoded), first_line(exc))
            return False
        return True

    def _one_by_one(self, decoded: list[_Decoded]) -> list[tuple[_Decoded, str]]:
        """Store each message in its own transaction; return those refused, with why."""
        refused: list[tuple[_Decoded, str]] = []
        for d in decoded:
            try:
                with self.home.session(write=True) as session:
                    self.store(session, [(d.device, d.message)])
            except Exception as exc:
                refused.append((d, first_line(exc)))
            else:
                self._stored([d])
        return refused

    def _registry_answers(self) -> bool:
        try:
            with self.home.session(write=True) as session:
                session.execute(text("SELECT 1"))
        except EdgefleetError:
            return False
        return True

    def _stored(self, decoded: list[_Decoded]) -> None:
        for d in decoded:
            self.metrics.inc("edgefleet_messages_ingested_total", kind=d.message.kind)
            self.ack(d.item)

    def _dead(
        self, item: Received, device: str, reason: DeadLetter, why: str, *, quiet: bool = False
    ) -> None:
        if not quiet:
            log.warning("dead letter from %s on %s (%s): %s", device, item.topic, reason, why)
        self.metrics.inc("edgefleet_messages_dead_lettered_total", reason=reason.value)
        self.ack(item)
