"""What the agent tells the controller: events, its retained status, and telemetry.

Every message is typed and its topic comes from the builders in ``shared``; the
publishing itself is a function passed in (the MQTT link in production).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from edgefleet import shared
from edgefleet.shared import (
    DeviceState,
    EventMessage,
    ModelStats,
    StatusMessage,
    SystemStats,
    TelemetryMessage,
)

from ._lifecycle import DeploymentRecord
from ._link import Outbound
from ._store import AgentState, FinishedDeployment

log = logging.getLogger("edgefleet.agent")


class Reporter:
    """Builds the agent's outgoing messages and hands them to ``publish``."""

    def __init__(
        self,
        *,
        device_id: str,
        profile: str,
        topic_prefix: str,
        agent_version: str,
        state: AgentState,
        lock: threading.Lock,
        publish: Callable[[Outbound], None],
    ) -> None:
        self._device_id = device_id
        self._profile = profile
        self._prefix = topic_prefix
        self._agent_version = agent_version
        self._state = state
        self._lock = lock  # the agent's: guards state against a half-made change
        self._publish = publish
        self._command_sha256: str | None = None  # of the command being handled (one worker)

    # -- events --------------------------------------------------------------------

    def deployment(self, record: DeploymentRecord) -> None:
        """Announce the state a deployment or rollback has just entered."""
        self.event(
            record.deployment_id,
            record.state,
            ok=record.state is not DeviceState.FAILED,
            code=record.error_code,
            message=record.error or "",
            timings=record.timings_ms,
            details=record.details,
        )

    def outcome(self, finished: FinishedDeployment) -> None:
        """Announce again how a deployment ended, for a controller that never heard it
        (``repeated`` in the details tells it from the first announcement)."""
        self.event(
            finished.deployment_id,
            finished.state,
            ok=finished.state is not DeviceState.FAILED,
            code=finished.error_code,
            message=finished.error or "",
            timings=finished.timings_ms,
            details={**finished.details, "repeated": 1},
        )

    def trust(self, update_id: str, version: int, key_ids: list[str], revoked: list[str]) -> None:
        """Announce the trust update now in force (also the answer to a redelivered one)."""
        details: dict[str, float | int | str | None] = {
            "version": version,
            "keys": ",".join(key_ids)[:500],
            "revoked": ",".join(revoked)[-500:],  # the newest ids when there are many
        }
        self.event(update_id, DeviceState.TRUST_UPDATED, details=details)

    @contextmanager
    def handling(self, payload: bytes) -> Iterator[None]:
        """While a command is handled, every rejection names it by the sha256 of its bytes,
        so the controller can match a refusal that carries no deployment id (a command
        signed by a key this device does not trust) to the order it sent."""
        outer, self._command_sha256 = self._command_sha256, hashlib.sha256(payload).hexdigest()
        try:
            yield
        finally:
            self._command_sha256 = outer

    def rejection(self, deployment_id: str, code: str, message: str) -> None:
        details: dict[str, float | int | str | None] = {}
        if self._command_sha256 is not None:
            details["command_sha256"] = self._command_sha256
        self.event(
            deployment_id,
            DeviceState.REJECTED,
            ok=False,
            code=code,
            message=message,
            details=details,
        )

    def event(
        self,
        deployment_id: str,
        state: DeviceState,
        *,
        ok: bool = True,
        code: str | None = None,
        message: str = "",
        timings: dict[str, float] | None = None,
        details: dict[str, float | int | str | None] | None = None,
    ) -> None:
        event = EventMessage(
            device_id=self._device_id,
            deployment_id=deployment_id,
            state=state,
            ok=ok,
            error_code=code,
            message=message[:2000],
            timings_ms=dict(timings or {}),
            details=dict(details or {}),
        )
        line = f"event {state} deployment={deployment_id or '-'}"
        if code:
            line += f" code={code} {message[:300]}"
        (log.info if ok else log.warning)(line)
        self._publish(
            Outbound(shared.events_topic(self._device_id, self._prefix), shared.encode(event))
        )

    # -- status --------------------------------------------------------------------

    def status(self, online: bool) -> Outbound:
        """The retained status message (also the birth message and, offline, the last will)."""
        with self._lock:
            state, current = self._state, self._state.current
            status = StatusMessage(
                device_id=self._device_id,
                online=online,
                agent_version=self._agent_version,
                profile=self._profile,
                state=current.state if current else DeviceState.IDLE,
                deployment_id=current.deployment_id if current else None,
                active=state.active.public() if state.active else None,
                previous=state.previous.public() if state.previous else None,
                last_sequence=state.last_sequence,
                # why it failed, in case the event that said so never reached the controller
                error_code=current.error_code if current else None,
                error=(current.error or "") if current else "",
            )
        return Outbound(
            shared.status_topic(self._device_id, self._prefix),
            shared.encode(status),
            retain=True,
        )

    def publish_status(self) -> None:
        self._publish(self.status(online=True))

    # -- telemetry -----------------------------------------------------------------

    def telemetry(self, interval_s: float, models: list[ModelStats], system: SystemStats) -> None:
        message = TelemetryMessage(
            device_id=self._device_id, interval_s=interval_s, models=models, system=system
        )
        topic = shared.telemetry_topic(self._device_id, self._prefix)
        self._publish(Outbound(topic, shared.encode(message), qos=0))
