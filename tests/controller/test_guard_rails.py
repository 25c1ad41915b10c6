"""Target selection and the size budget: a key given twice means either value, different
keys and --profile must all match, a selector that matches nothing is refused, and a variant
over its profile's size budget is refused unless forced; a refusal writes nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from edgefleet.controller.rollout import parse_label_selector
from edgefleet.shared.errors import ConfigError

from .conftest import Cli, sqlite_snapshot

TINY = """name = "tiny"
arch = "armv7"
cores = 1
ram_mb = 256
[budgets]
max_size_bytes = 4096
max_latency_ms = 50
max_accuracy_drop = 0.02
"""


@pytest.fixture
def fleet(cli: Cli, initialised: Path, model_file: Path) -> Path:
    (initialised / "profiles" / "tiny.toml").write_text(TINY)
    for name, profile, labels in (
        ("pi-1", "rpi4", ["site=lab", "room=1"]),
        ("pi-2", "rpi4", ["site=home", "room=1"]),
        ("pi-3", "rpi4", ["site=office"]),
        ("pi5-1", "rpi5", ["site=lab"]),
        ("mcu-1", "tiny", ["site=lab"]),
    ):
        cli.ok("device", "add", name, "--profile", profile, *(f"-l{x}" for x in labels))
    cli.ok("model", "add", str(model_file), "--name", "digits", "--version", "1.0.0")
    return initialised


def _targets(cli: Cli, *args: str) -> list[str]:
    rows = json.loads(cli.ok("deploy", "digits:1.0.0", *args, "--json").stdout)
    return sorted(r["device"] for r in rows)


def _selector(home: Path) -> dict[str, object]:
    with sqlite3.connect(home / "registry.db") as conn:
        (text,) = conn.execute("SELECT selector FROM rollout ORDER BY id DESC LIMIT 1").fetchone()
    return dict(json.loads(text))


def test_a_repeated_label_key_means_any_of_its_values(cli: Cli, fleet: Path) -> None:
    assert _targets(cli, "-l", "site=home", "-l", "site=office") == ["pi-2", "pi-3"]
    assert _selector(fleet) == {"labels": {"site": ["home", "office"]}}


def test_different_label_keys_must_all_match(cli: Cli, fleet: Path) -> None:
    assert _targets(cli, "-l", "site=lab", "-l", "room=1") == ["pi-1"]
    assert _targets(cli, "-l", "room=1", "-l", "site=lab", "-l", "site=home") == ["pi-1", "pi-2"]


def test_profile_and_label_combine(cli: Cli, fleet: Path) -> None:
    assert _targets(cli, "--profile", "rpi4", "-l", "site=lab") == ["pi-1"]
    assert _selector(fleet) == {"profile": "rpi4", "labels": {"site": "lab"}}
    assert _targets(cli, "-p", "rpi5", "-l", "site=lab", "-l", "site=home") == ["pi5-1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "rpi5", "-l", "site=home"], "no device matches profile 'rpi5' and labels"),
        (["-l", "site=mars", "-l", "site=moon"], "no device matches labels site=mars|moon"),
        (["-l", "site=lab", "-l", "room=9"], "no device matches labels room=9 site=lab"),
        (["--device", "pi-1", "-l", "site=lab"], "exactly one of"),
    ],
)
def test_a_selector_matching_nothing_is_refused_and_writes_nothing(
    cli: Cli, fleet: Path, args: list[str], message: str
) -> None:
    before = sqlite_snapshot(fleet / "registry.db")
    result = cli("deploy", "digits:1.0.0", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert sqlite_snapshot(fleet / "registry.db") == before


def test_a_variant_over_the_size_budget_is_refused_unless_forced(
    cli: Cli, fleet: Path, model_file: Path
) -> None:
    before = sqlite_snapshot(fleet / "registry.db")
    result = cli("deploy", "digits:1.0.0", "-l", "site=lab")
    assert result.exit_code == 2, result.output
    size = f"{model_file.stat().st_size / 1024:.1f} KB"
    assert result.stderr.startswith(
        f"error: digits:1.0.0: variant fp32 is {size}, over profile tiny's size budget "
        "of 4.0 KB (1 device(s): mcu-1)"
    )
    assert "--force" in result.stderr and "edgefleet compress digits:1.0.0 --profile tiny" in (
        result.stderr
    )
    assert sqlite_snapshot(fleet / "registry.db") == before
    # the devices within budget alone are fine
    assert _targets(cli, "-l", "site=lab", "-p", "rpi4") == ["pi-1"]
    assert _targets(cli, "-l", "site=lab", "--force") == ["mcu-1", "pi-1", "pi5-1"]


def test_the_rollout_library_refuses_too(cli: Cli, fleet: Path) -> None:
    from edgefleet.controller import load_settings, open_home
    from edgefleet.controller.rollout import RolloutPlan, start_rollout

    home = open_home(load_settings(fleet))
    try:
        with pytest.raises(ConfigError, match="over profile tiny's size budget"):
            start_rollout(home, "digits:1.0.0", devices=["mcu-1"], plan=RolloutPlan())
        detail = start_rollout(
            home, "digits:1.0.0", devices=["mcu-1"], plan=RolloutPlan(), force=True
        )
        assert [d.device for d in detail.devices] == ["mcu-1"]
    finally:
        home.close()


def test_parse_label_selector() -> None:
    assert parse_label_selector(["site=lab", "site=home", "room=2", "site=lab"]) == {
        "site": ["home", "lab"],
        "room": ["2"],
    }
    with pytest.raises(ConfigError, match="malformed label"):
        parse_label_selector(["site"])
