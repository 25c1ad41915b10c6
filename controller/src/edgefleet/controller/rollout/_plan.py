"""What a rollout is asked to do: its waves, bake, gates and maintenance window, as frozen
models stored with the rollout (JSON), and the parsers the CLI uses for its flags."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet.shared.errors import ConfigError

# The gates in the order they are evaluated and shown.
GATE_NAMES: tuple[str, ...] = ("install", "latency", "absolute", "errors")

_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
_WAVE = re.compile(r"(?:(\d+)|(\d+(?:\.\d+)?)%)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Bake(BaseModel):
    """How long a wave runs on the new version before its gates may pass it."""

    model_config = _FROZEN

    min_requests: int = Field(default=100, ge=0)  # per committed device, on the new version
    min_s: float = Field(default=60.0, ge=0)
    max_s: float = Field(default=900.0)
    # Latency is read from this long after each device's swap on: loading a model, warming
    # its session and the wave's other devices swapping at the same moment slow the first
    # seconds, and a p95 over a minute is moved by three slow seconds. Errors count from the
    # swap on.
    settle_s: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _max_after_min(self) -> Self:
        if self.max_s < self.min_s:
            raise ValueError(f"the bake's max ({self.max_s:g}s) is below its min ({self.min_s:g}s)")
        return self


class Gates(BaseModel):
    """The thresholds of the gates that judge a wave (see ``_gates``)."""

    model_config = _FROZEN

    # The share of a wave's counted devices that must commit.
    quorum: float = Field(default=0.8, gt=0, le=1)
    # The install gate judges once this many counted devices finished.
    min_finished: int = Field(default=1, ge=1)
    # A device's new p95 may be up to (1 + tolerance) times its own baseline p95 ...
    latency_tolerance: float = Field(default=0.3, ge=0)
    # ... unless the slowdown is significant at this level (the rank test over intervals).
    latency_alpha: float = Field(default=0.01, gt=0, lt=1)
    # The absolute p95 limit; None: each device's profile max_latency_ms.
    latency_limit_ms: float | None = Field(default=None, gt=0)
    error_threshold: float = Field(default=0.01, gt=0, lt=1)
    error_min_requests: int = Field(default=200, ge=1)
    # Of the two-sided Wilson interval on the error rate.
    confidence: float = Field(default=0.95, gt=0, lt=1)
    enabled: tuple[str, ...] = GATE_NAMES

    @field_validator("enabled")
    @classmethod
    def _known_gates(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in GATE_NAMES]
        if unknown:
            raise ValueError(f"unknown gate {unknown[0]!r}: gates are {', '.join(GATE_NAMES)}")
        if not names:
            raise ValueError("at least one gate must stay enabled (no gates at all: gates=None)")
        return tuple(n for n in GATE_NAMES if n in names)  # canonical order, no repeats


class Window(BaseModel):
    """A maintenance window: open for ``duration_s`` after each firing of a five-field cron
    expression read in time zone ``tz``. Naive datetimes are taken as UTC (the registry's)."""

    model_config = _FROZEN

    cron: str
    duration_s: float = Field(gt=0)
    tz: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        cron = " ".join(cron.split())
        if len(cron.split()) != 5:
            raise ValueError(
                f"cron expression {cron!r} needs 5 fields: minute hour day month weekday"
            )
        try:
            next(CronSim(cron, datetime(2000, 1, 1)))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {cron!r}: {exc}") from exc
        except StopIteration as exc:
            raise ValueError(f"cron expression {cron!r} never fires") from exc
        return cron

    @field_validator("tz")
    @classmethod
    def _valid_tz(cls, tz: str) -> str:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {tz!r}") from exc
        return tz

    def _last_firing(self, now: datetime) -> datetime | None:
        """The most recent firing at or before ``now`` (aware), None if none in 50 years."""
        # cronsim steps one second back before it searches: start a second later
        start = now.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
        try:
            return next(CronSim(self.cron, start.astimezone(ZoneInfo(self.tz)), reverse=True))
        except StopIteration:
            return None

    def is_open(self, now: datetime) -> bool:
        aware = _aware(now)
        last = self._last_firing(aware)
        # Subtract in UTC: datetimes sharing a tzinfo subtract as wall-clock times.
        return last is not None and (aware - last.astimezone(UTC)).total_seconds() < self.duration_s

    def next_open(self, now: datetime) -> datetime:
        """``now`` if the window is open, else its next opening, in ``now``'s convention
        (aware in ``now``'s zone, or naive UTC)."""
        if self.is_open(now):
            return now
        aware = _aware(now)
        try:
            opens = next(CronSim(self.cron, aware.astimezone(ZoneInfo(self.tz))))
        except StopIteration as exc:
            raise ConfigError(f"the window {self.cron!r} never opens again") from exc
        if now.tzinfo is None:
            return opens.astimezone(UTC).replace(tzinfo=None)
        return opens.astimezone(now.tzinfo)


def _aware(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now


class RolloutPlan(BaseModel):
    """How a rollout proceeds; stored as JSON with the rollout and read back unchanged."""

    model_config = _FROZEN

    waves: tuple[str, ...] = ("1", "10%", "50%", "100%")  # cumulative targets after each wave
    min_wave_devices: int = Field(default=1, ge=1)
    bake: Bake | None = Bake()  # None: no bake (plain deploy)
    gates: Gates | None = Gates()  # None: one wave that completes when every row finished
    on_fail: Literal["rollback", "hold"] = "rollback"
    # A device silent this long after its command is lost.
    in_progress_timeout_s: float = Field(default=900.0, gt=0)
    # How often the engine evaluates the gates while a wave bakes.
    analysis_interval_s: float = Field(default=5.0, gt=0)
    window: Window | None = None

    @field_validator("waves")
    @classmethod
    def _valid_waves(cls, waves: tuple[str, ...]) -> tuple[str, ...]:
        return _check_waves(waves)

    def wave_sizes(self, n_targets: int) -> list[int]:
        """The number of devices in each wave, summing to ``n_targets``.

        Each spec is the cumulative target after its wave: a count, or a percentage of
        ``n_targets`` rounded up. A wave has at least ``min_wave_devices`` (never more than
        what remains); a wave the ones before it already covered is dropped; if the last
        spec leaves devices over, one more wave takes them. With the default waves
        ``("1", "10%", "50%", "100%")``:

        - 20 targets: cumulative 1, 2, 10, 20 -> ``[1, 1, 8, 10]``
        - 3 targets: cumulative 1, 1 (dropped), 2, 3 -> ``[1, 1, 1]``
        - 20 targets, ``min_wave_devices=5``: 5, 2 (dropped), 10, 20 -> ``[5, 5, 10]``
        - 20 targets, waves ``("1", "10%")``: 1, 2, then the rest -> ``[1, 1, 18]``
        """
        if n_targets < 0:
            raise ValueError(f"n_targets must be >= 0, got {n_targets}")
        sizes: list[int] = []
        done = 0
        for spec in self.waves:
            target = min(n_targets, _resolve(spec, n_targets))
            if target <= done:
                continue
            size = min(max(target - done, self.min_wave_devices), n_targets - done)
            sizes.append(size)
            done += size
        if done < n_targets:
            sizes.append(n_targets - done)
        return sizes


def _resolve(spec: str, n_targets: int) -> int:
    if spec.endswith("%"):
        return math.ceil(Fraction(spec[:-1]) * n_targets / 100)
    return int(spec)


def _check_waves(waves: Sequence[str]) -> tuple[str, ...]:
    """Each spec a count >= 1 or a percentage in (0, 100]; neither kind going down."""
    specs = tuple(s.strip() for s in waves)
    if not specs:
        raise ValueError("give at least one wave, e.g. 1,10%,50%,100%")
    last: dict[bool, Fraction] = {}
    for spec in specs:
        match = _WAVE.fullmatch(spec)
        if match is None:
            raise ValueError(f"wave {spec!r} is neither a device count (5) nor a percentage (10%)")
        percent = match.group(2) is not None
        value = Fraction(match.group(2) if percent else match.group(1))
        if value <= 0 or (percent and value > 100):
            raise ValueError(f"wave {spec!r} must be a count >= 1 or a percentage in (0, 100]")
        if value < last.get(percent, value):
            raise ValueError(f"waves are cumulative: {spec!r} is below an earlier wave")
        last[percent] = value
    return specs


def deploy_plan() -> RolloutPlan:
    """What ``edgefleet deploy`` runs: every target at once, no bake, no gates."""
    return RolloutPlan(waves=("100%",), bake=None, gates=None)


def spread_order(devices: Sequence[tuple[str, str]]) -> list[str]:
    """Device names in wave order: profiles (sorted by name) take turns, devices sorted by
    name within a profile, so the first waves exercise every profile's variant.

    ``[("a1", "pi"), ("a2", "pi"), ("a3", "pi"), ("b1", "jetson")]`` -> ``b1, a1, a2, a3``
    """
    names = [name for name, _ in devices]
    if len(set(names)) != len(names):
        raise ValueError("device names must be unique")
    by_profile: dict[str, list[str]] = {}
    for name, profile in devices:
        by_profile.setdefault(profile, []).append(name)
    queues = [sorted(by_profile[p]) for p in sorted(by_profile)]
    longest = max((len(q) for q in queues), default=0)
    return [q[i] for i in range(longest) for q in queues if i < len(q)]


def parse_waves(text: str) -> tuple[str, ...]:
    """``"1,10%,50%,100%"`` -> ``("1", "10%", "50%", "100%")``; ConfigError when invalid."""
    try:
        return _check_waves(text.split(",") if text.strip() else [])
    except ValueError as exc:
        raise ConfigError(f"--waves {text!r}: {exc}") from exc


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1h``, ``1d`` or a sum like ``1h30m``."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ConfigError(f"duration {text!r}: use seconds (90) or a unit (90s, 5m, 1h, 1h30m)")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


_BAKE_KEYS = {"min_requests": "min_requests", "min": "min_s", "max": "max_s", "settle": "settle_s"}


def parse_bake(text: str) -> Bake:
    """``"min_requests=100,min=60s,max=15m,settle=10s"``; each key optional, the rest
    default."""
    fields: dict[str, float | int] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _BAKE_KEYS:
            raise ConfigError(
                f"--bake {item!r}: use KEY=VALUE with keys {', '.join(_BAKE_KEYS)}"
                " (e.g. min_requests=100,min=60s,max=15m)"
            )
        if key == "min_requests":
            if not value.strip().isdigit():
                raise ConfigError(f"--bake {item!r}: min_requests is a whole number")
            fields["min_requests"] = int(value)
        else:
            fields[_BAKE_KEYS[key]] = parse_duration(value)
    try:
        return Bake.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(f"--bake {text!r}: {_first_error(exc)}") from exc


# --gate KEY: the Gates field it sets, and whether a trailing % is accepted.
_GATE_KEYS: dict[str, tuple[str, bool]] = {
    "quorum": ("quorum", True),
    "install.min_finished": ("min_finished", False),
    "latency.tolerance": ("latency_tolerance", True),
    "latency.alpha": ("latency_alpha", True),
    "latency.limit_ms": ("latency_limit_ms", False),
    "errors.threshold": ("error_threshold", True),
    "errors.min_requests": ("error_min_requests", False),
    "errors.confidence": ("confidence", True),
}
_GATE_LISTS = ("off", "on", "only")


def parse_gate_options(items: list[str], base: Gates | None = None) -> Gates:
    """Apply repeated ``--gate KEY=VALUE`` options, in order, on ``base`` (default Gates()).

    ``quorum=0.9``, ``latency.tolerance=20%``, ``latency.limit_ms=20`` (``none``: the
    profile's), ``errors.threshold=0.02``, ``off=latency``, ``on=latency``,
    ``only=install,errors``.
    """
    values = (base or Gates()).model_dump()
    valid = ", ".join([*_GATE_KEYS, *_GATE_LISTS])
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not value:
            raise ConfigError(f"--gate {item!r}: use KEY=VALUE with KEY one of {valid}")
        if key in _GATE_LISTS:
            names = [n.strip() for n in value.split(",") if n.strip()]
            unknown = [n for n in names if n not in GATE_NAMES]
            if unknown:
                raise ConfigError(
                    f"--gate {item!r}: unknown gate {unknown[0]!r};"
                    f" gates are {', '.join(GATE_NAMES)}"
                )
            enabled = set(values["enabled"])
            if key == "only":
                enabled = set(names)
            elif key == "off":
                enabled -= set(names)
            else:
                enabled |= set(names)
            if not enabled:
                raise ConfigError(
                    f"--gate {item!r} turns every gate off;"
                    " `edgefleet deploy` deploys without gates"
                )
            values["enabled"] = tuple(enabled)
        elif key in _GATE_KEYS:
            field, percent_ok = _GATE_KEYS[key]
            values[field] = _gate_value(item, value, percent_ok)
        else:
            raise ConfigError(f"--gate {item!r}: unknown key {key!r}; valid keys: {valid}")
    try:
        return Gates.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"--gate {' '.join(items)}: {_first_error(exc)}") from exc


def _gate_value(item: str, value: str, percent_ok: bool) -> str | float | None:
    if value.lower() == "none":
        return None  # only latency.limit_ms accepts it; the others fail validation
    if percent_ok and value.endswith("%"):
        try:
            return float(value[:-1]) / 100
        except ValueError:
            raise ConfigError(f"--gate {item!r}: {value!r} is not a number") from None
    return value  # pydantic converts "0.9" and "500" and refuses what is not a number


def parse_window(cron: str, duration: str, tz: str = "UTC") -> Window:
    """A maintenance window from ``--window-cron "0 2 * * *" --window-duration 3h``."""
    try:
        return Window(cron=cron, duration_s=parse_duration(duration), tz=tz)
    except ValidationError as exc:
        raise ConfigError(f"maintenance window: {_first_error(exc)}") from exc


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
