"""Rollout plans: wave sizes, the order devices are spread over waves, the CLI's parsers,
maintenance windows, and the plan's JSON round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from edgefleet.controller.rollout._plan import (
    GATE_NAMES,
    Bake,
    Gates,
    RolloutPlan,
    Window,
    deploy_plan,
    parse_bake,
    parse_duration,
    parse_gate_options,
    parse_waves,
    parse_window,
    spread_order,
)
from edgefleet.shared.errors import ConfigError

DEFAULT_WAVES = ("1", "10%", "50%", "100%")


@pytest.mark.parametrize(
    ("waves", "min_wave", "n", "sizes"),
    [
        (DEFAULT_WAVES, 1, 20, [1, 1, 8, 10]),
        (DEFAULT_WAVES, 1, 3, [1, 1, 1]),  # 10% of 3 is 1: that wave is empty, dropped
        (DEFAULT_WAVES, 1, 1, [1]),
        (DEFAULT_WAVES, 1, 2, [1, 1]),
        (DEFAULT_WAVES, 1, 0, []),
        (DEFAULT_WAVES, 1, 100, [1, 9, 40, 50]),
        (DEFAULT_WAVES, 5, 20, [5, 5, 10]),  # 1 grows to 5; 10% (2) is then empty
        (DEFAULT_WAVES, 5, 12, [5, 5, 2]),  # 5, then 10% (2) dropped, 6 -> 10, the last 2
        (DEFAULT_WAVES, 5, 3, [3]),  # a wave cannot take more than what remains
        (("1", "10%"), 1, 20, [1, 1, 18]),  # below 100%: a final wave takes the rest
        (("5",), 1, 20, [5, 15]),
        (("50",), 1, 20, [20]),  # a count above the targets covers them all
        (("100%",), 1, 7, [7]),
        (("5", "10%"), 1, 20, [5, 15]),  # 10% (2) is below the 5 already done: dropped
        (("7%", "100%"), 1, 100, [7, 93]),  # 7% of 100 is exactly 7, not 8 (no float drift)
        (("0.5%", "100%"), 1, 1000, [5, 995]),
        (("1", "1", "100%"), 1, 4, [1, 3]),
    ],
)
def test_wave_sizes(waves: tuple[str, ...], min_wave: int, n: int, sizes: list[int]) -> None:
    plan = RolloutPlan(waves=waves, min_wave_devices=min_wave)
    assert plan.wave_sizes(n) == sizes


@pytest.mark.parametrize("min_wave", [1, 2, 5])
@pytest.mark.parametrize("waves", [DEFAULT_WAVES, ("1", "2", "3%"), ("25%", "50%", "75%")])
def test_wave_sizes_always_cover_every_target_once(min_wave: int, waves: tuple[str, ...]) -> None:
    plan = RolloutPlan(waves=waves, min_wave_devices=min_wave)
    for n in range(0, 300):
        sizes = plan.wave_sizes(n)
        assert sum(sizes) == n
        assert all(s >= 1 for s in sizes)
        assert all(s >= min_wave for s in sizes[:-1])
        assert len(sizes) <= len(waves) + 1


def test_wave_sizes_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="n_targets"):
        RolloutPlan().wave_sizes(-1)


@pytest.mark.parametrize(
    ("text", "waves"),
    [
        ("1,10%,50%,100%", DEFAULT_WAVES),
        (" 1 , 10% ,100% ", ("1", "10%", "100%")),
        ("100%", ("100%",)),
        ("5,20", ("5", "20")),
        ("2.5%,100%", ("2.5%", "100%")),
        ("10,5%", ("10", "5%")),  # counts and percentages compare only once n is known
    ],
)
def test_parse_waves(text: str, waves: tuple[str, ...]) -> None:
    assert parse_waves(text) == waves


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at least one wave"),
        ("1,,100%", "neither a device count"),
        ("0,100%", "count >= 1"),
        ("0%", "percentage in"),
        ("150%", "percentage in"),
        ("-1", "neither a device count"),
        ("ten", "neither a device count"),
        ("50%,10%", "below an earlier wave"),
        ("10,5", "below an earlier wave"),
        ("1.5", "neither a device count"),
    ],
)
def test_parse_waves_refuses(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_waves(text)


def test_a_plan_refuses_bad_waves_when_read_back() -> None:
    with pytest.raises(ValidationError, match="below an earlier wave"):
        RolloutPlan.model_validate({"waves": ["50%", "10%"]})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1.5m", 90),
        ("2d", 172800),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5x", "-5s", "5 minutes", "1h-30m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "bake"),
    [
        ("min_requests=100,min=60s,max=15m", Bake(min_requests=100, min_s=60, max_s=900)),
        ("", Bake()),
        ("max=20m", Bake(max_s=1200)),
        ("min=0,max=0", Bake(min_s=0, max_s=0)),
        ("min_requests=0", Bake(min_requests=0)),
        ("min=2m , min_requests=500", Bake(min_s=120, min_requests=500)),
    ],
)
def test_parse_bake(text: str, bake: Bake) -> None:
    assert parse_bake(text) == bake


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max=30s", r"max \(30s\) is below its min \(60s\)"),
        ("min_requests=many", "whole number"),
        ("min_requests=-1", "whole number"),
        ("duration=5m", "keys min_requests, min, max"),
        ("min", "keys min_requests, min, max"),
        ("min=soon", "duration"),
    ],
)
def test_parse_bake_refuses(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_bake(text)


@pytest.mark.parametrize(
    ("items", "changed"),
    [
        ([], {}),
        (["quorum=0.9"], {"quorum": 0.9}),
        (["quorum=90%"], {"quorum": 0.9}),
        (["install.min_finished=3"], {"min_finished": 3}),
        (["latency.tolerance=0.2"], {"latency_tolerance": 0.2}),
        (["latency.alpha=0.05"], {"latency_alpha": 0.05}),
        (["latency.limit_ms=20"], {"latency_limit_ms": 20.0}),
        (["errors.threshold=0.02"], {"error_threshold": 0.02}),
        (["errors.threshold=2%"], {"error_threshold": 0.02}),
        (["errors.min_requests=500"], {"error_min_requests": 500}),
        (["errors.confidence=0.99"], {"confidence": 0.99}),
        (["off=latency"], {"enabled": ("install", "absolute", "errors")}),
        (["off=latency,absolute"], {"enabled": ("install", "errors")}),
        (["only=errors,install"], {"enabled": ("install", "errors")}),
        (["only=install", "on=latency"], {"enabled": ("install", "latency")}),
        (["quorum=0.9", "quorum=1"], {"quorum": 1.0}),  # the last one wins
    ],
)
def test_parse_gate_options(items: list[str], changed: dict[str, object]) -> None:
    assert parse_gate_options(items) == Gates.model_validate({**Gates().model_dump(), **changed})


def test_parse_gate_options_builds_on_a_base() -> None:
    base = Gates(latency_limit_ms=20, enabled=("install", "errors"))
    gates = parse_gate_options(["on=latency", "latency.limit_ms=none"], base)
    assert gates.enabled == ("install", "latency", "errors")
    assert gates.latency_limit_ms is None


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["quorum"], "KEY=VALUE"),
        (["quorum="], "KEY=VALUE"),
        (["speed=3"], "unknown key 'speed'; valid keys: quorum, install.min_finished"),
        (["off=lat"], "unknown gate 'lat'; gates are install, latency, absolute, errors"),
        (["only=install", "off=install"], "turns every gate off"),
        (["quorum=0"], "quorum"),
        (["quorum=1.5"], "quorum"),
        (["quorum=abc"], "quorum"),
        (["quorum=abc%"], "not a number"),
        (["errors.min_requests=2.5"], "error_min_requests"),
        (["latency.limit_ms=-3"], "latency_limit_ms"),
        (["quorum=none"], "quorum"),
        (["latency.alpha=nan"], "latency_alpha"),
    ],
)
def test_parse_gate_options_refuses(items: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_gate_options(items)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"enabled": ("install", "speed")}, "unknown gate 'speed'"),
        ({"enabled": ()}, "at least one gate"),
        ({"quorum": 0}, "quorum"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_gates_refuse(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Gates.model_validate(fields)


def test_gates_keep_their_enabled_names_in_evaluation_order() -> None:
    assert Gates(enabled=("errors", "install", "errors")).enabled == ("install", "errors")
    assert Gates().enabled == GATE_NAMES


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_s": 120, "max_s": 60}, "below its min"),
        ({"min_requests": -1}, "min_requests"),
        ({"max_s": float("inf")}, "max_s"),
        ({"min_s": -1, "max_s": 10}, "min_s"),
    ],
)
def test_bake_refuses(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Bake.model_validate(fields)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, s: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, s, tzinfo=UTC)


NIGHTLY = Window(cron="0 2 * * *", duration_s=3 * 3600)  # 02:00-05:00 UTC
PARIS = Window(cron="0 2 * * *", duration_s=3600, tz="Europe/Paris")  # 02:00-03:00 local
WEEKEND = Window(cron="30 22 * * SAT", duration_s=4 * 3600)  # Sat 22:30 - Sun 02:30 UTC


@pytest.mark.parametrize(
    ("window", "now", "is_open", "next_open"),
    [
        (NIGHTLY, utc(2025, 6, 1, 2, 0), True, utc(2025, 6, 1, 2, 0)),  # opens on the firing
        (NIGHTLY, utc(2025, 6, 1, 4, 59, 59), True, utc(2025, 6, 1, 4, 59, 59)),
        (NIGHTLY, utc(2025, 6, 1, 5, 0), False, utc(2025, 6, 2, 2, 0)),  # closed at the end
        (NIGHTLY, utc(2025, 6, 1, 1, 59, 59), False, utc(2025, 6, 1, 2, 0)),
        (NIGHTLY, datetime(2025, 6, 1, 3, 0), True, datetime(2025, 6, 1, 3, 0)),  # naive: UTC
        (NIGHTLY, datetime(2025, 6, 1, 6, 0), False, datetime(2025, 6, 2, 2, 0)),
        # 02:00 in Paris is 00:00 UTC in summer and 01:00 UTC in winter.
        (PARIS, utc(2025, 6, 1, 0, 30), True, utc(2025, 6, 1, 0, 30)),
        (PARIS, utc(2025, 6, 1, 1, 30), False, utc(2025, 6, 2, 0, 0)),
        (PARIS, utc(2025, 1, 15, 0, 30), False, utc(2025, 1, 15, 1, 0)),
        (PARIS, utc(2025, 1, 15, 1, 30), True, utc(2025, 1, 15, 1, 30)),
        # 2025-03-30 has no 02:00 in Paris: cron (Debian's) runs the job at 03:00 CEST.
        (PARIS, utc(2025, 3, 30, 0, 30), False, utc(2025, 3, 30, 1, 0)),
        (PARIS, utc(2025, 3, 30, 1, 30), True, utc(2025, 3, 30, 1, 30)),
        # 2025-10-26 has 02:00-03:00 twice in Paris: the window opens once, at the first.
        (PARIS, utc(2025, 10, 26, 0, 30), True, utc(2025, 10, 26, 0, 30)),
        (PARIS, utc(2025, 10, 26, 1, 30), False, utc(2025, 10, 27, 1, 0)),
        # A window that runs past midnight into Sunday.
        (WEEKEND, utc(2025, 6, 8, 1, 0), True, utc(2025, 6, 8, 1, 0)),
        (WEEKEND, utc(2025, 6, 8, 3, 0), False, utc(2025, 6, 14, 22, 30)),
    ],
)
def test_window(window: Window, now: datetime, is_open: bool, next_open: datetime) -> None:
    assert window.is_open(now) is is_open
    assert window.next_open(now) == next_open
    assert (window.next_open(now).tzinfo is None) == (now.tzinfo is None)


def test_next_open_answers_in_the_callers_zone() -> None:
    tokyo = timezone(timedelta(hours=9))
    opens = NIGHTLY.next_open(datetime(2025, 6, 1, 15, 0, tzinfo=tokyo))  # 06:00 UTC
    assert opens.utcoffset() == timedelta(hours=9)
    assert opens == utc(2025, 6, 2, 2, 0)


def test_parse_window() -> None:
    window = parse_window("  0  2 * * MON-FRI ", "1h30m", "America/New_York")
    assert window == Window(cron="0 2 * * MON-FRI", duration_s=5400, tz="America/New_York")


@pytest.mark.parametrize(
    ("cron", "duration", "tz", "message"),
    [
        ("0 2 * *", "1h", "UTC", "needs 5 fields"),
        ("0 0 2 * * *", "1h", "UTC", "needs 5 fields"),  # no seconds field
        ("61 2 * * *", "1h", "UTC", "invalid cron expression"),
        ("0 0 30 2 *", "1h", "UTC", "invalid cron expression"),  # February 30th
        ("0 2 * * *", "0", "UTC", "duration_s"),
        ("0 2 * * *", "soon", "UTC", "duration"),
        ("0 2 * * *", "1h", "Mars/Olympus", "unknown time zone"),
        ("0 2 * * *", "1h", "../etc/passwd", "unknown time zone"),
    ],
)
def test_parse_window_refuses(cron: str, duration: str, tz: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_window(cron, duration, tz)


@pytest.mark.parametrize(
    "plan",
    [
        RolloutPlan(),
        deploy_plan(),
        RolloutPlan(
            waves=("2", "25%", "100%"),
            min_wave_devices=2,
            bake=Bake(min_requests=50, min_s=0, max_s=30),
            gates=Gates(latency_limit_ms=12.5, enabled=("install", "errors")),
            on_fail="hold",
            window=Window(cron="0 2 * * *", duration_s=3600, tz="Europe/Paris"),
        ),
    ],
)
def test_a_plan_reads_back_from_its_json(plan: RolloutPlan) -> None:
    import json

    stored = json.dumps(plan.model_dump(mode="json"))
    assert RolloutPlan.model_validate(json.loads(stored)) == plan


def test_deploy_plan_is_one_wave_without_bake_or_gates() -> None:
    plan = deploy_plan()
    assert (plan.waves, plan.bake, plan.gates) == (("100%",), None, None)
    assert plan.wave_sizes(37) == [37]


def test_plans_are_frozen_and_strict() -> None:
    plan = RolloutPlan()
    with pytest.raises(ValidationError):
        plan.min_wave_devices = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        RolloutPlan.model_validate({**plan.model_dump(mode="json"), "speed": "fast"})
    with pytest.raises(ValidationError, match="on_fail"):
        RolloutPlan(on_fail="ignore")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("devices", "order"),
    [
        ([], []),
        ([("a", "pi")], ["a"]),
        (
            [("a3", "pi"), ("a1", "pi"), ("a2", "pi"), ("b1", "jetson")],
            ["b1", "a1", "a2", "a3"],  # jetson sorts first; pi's devices by name
        ),
        (
            [("p2", "pi"), ("j1", "jetson"), ("p1", "pi"), ("x1", "x86"), ("j2", "jetson")],
            ["j1", "p1", "x1", "j2", "p2"],
        ),
        (
            [(f"p{i:02}", "pi") for i in range(5)] + [("j", "jetson"), ("x", "x86")],
            ["j", "p00", "x", "p01", "p02", "p03", "p04"],
        ),
    ],
)
def test_spread_order(devices: list[tuple[str, str]], order: list[str]) -> None:
    assert spread_order(devices) == order
    assert spread_order(list(reversed(devices))) == order  # the input order does not matter


def test_spread_order_puts_every_profile_in_the_first_waves() -> None:
    devices = [(f"pi-{i:03}", "pi") for i in range(90)] + [(f"jet-{i}", "jetson") for i in range(8)]
    devices += [("x86-0", "x86"), ("x86-1", "x86")]
    order = spread_order(devices)
    sizes = RolloutPlan().wave_sizes(len(order))
    assert sizes == [1, 9, 40, 50]
    second = order[: sum(sizes[:2])]  # waves 1 and 2: 10 devices
    assert {p for n, p in devices if n in second} == {"pi", "jetson", "x86"}


def test_spread_order_refuses_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        spread_order([("a", "pi"), ("a", "jetson")])
