"""The daemon's Prometheus ``/metrics``: its own counters plus fleet gauges read from the registry.

The text exposition format is small enough to write by hand, which keeps a
dependency out of the controller.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from ..registry import Deployment, Device

_HELP = {
    "edgefleet_messages_ingested_total": "Messages from devices written to the registry.",
    "edgefleet_messages_dead_lettered_total": (
        "Messages from devices acknowledged without being stored, by reason: invalid, "
        "rate_limited (over the device's share) or unstorable (refused by the registry)."
    ),
    "edgefleet_deployments_dispatched_total": "Signed manifests published to devices.",
    "edgefleet_deployments_resent_total": (
        "Stored manifests published again on connecting, not yet confirmed by their device."
    ),
    "edgefleet_artifact_requests_total": "Artifact server responses, by HTTP status.",
}


class Metrics:
    """Thread-safe counters with labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[key] += amount

    def value(self, name: str, **labels: str) -> int:
        with self._lock:
            return self._counts[(name, tuple(sorted(labels.items())))]

    def render(self, engine: Engine | None = None) -> str:
        lines: list[str] = []
        with self._lock:
            counts = dict(self._counts)
        for name, text in _HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            rows = [(labels, v) for (n, labels), v in sorted(counts.items()) if n == name]
            for labels, v in rows or [((), 0)]:
                lines.append(f"{name}{_labels(labels)} {v}")
        if engine is not None:
            lines += _fleet_gauges(engine)
        return "\n".join(lines) + "\n"


def _fleet_gauges(engine: Engine) -> list[str]:
    with Session(engine) as session:
        online = session.exec(
            select(Device.online, func.count()).group_by(Device.online)  # type: ignore[arg-type]
        ).all()
        states = session.exec(
            select(Deployment.state, func.count()).group_by(Deployment.state)
        ).all()
    lines = [
        "# HELP edgefleet_devices Enrolled devices, by whether they are online.",
        "# TYPE edgefleet_devices gauge",
    ]
    by_flag = {bool(flag): n for flag, n in online}
    for flag in (True, False):
        lines.append(f'edgefleet_devices{{online="{str(flag).lower()}"}} {by_flag.get(flag, 0)}')
    lines += [
        "# HELP edgefleet_deployment_rows Per-device deployment rows, by state.",
        "# TYPE edgefleet_deployment_rows gauge",
    ]
    lines += [f'edgefleet_deployment_rows{{state="{s}"}} {n}' for s, n in sorted(states)]
    return lines


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


MetricsText = Callable[[], str]
