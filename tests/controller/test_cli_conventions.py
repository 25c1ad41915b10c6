"""The command line's conventions: --version, -h everywhere, shell completion, help that
shows what to type (no Typer type names such as <bool> or {ref}), --json on `device add`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from edgefleet.controller import SCHEMA_VERSION
from edgefleet.controller.cli import app

from .conftest import Cli

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # rich wraps help at the terminal's width


def _help(*path: str) -> str:
    result = runner.invoke(app, [*path, "--help"], env=WIDE, prog_name="edgefleet")
    assert result.exit_code == 0, result.output
    return result.output


def _walk(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(get_command(app)))
# what Typer prints when a parameter has no placeholder: its Python type in angle brackets
# (<bool>, <str>, <list[str]>, <float range>, <rollback|hold>) or a required argument's
# name in braces ({ref})
TYPE_NAME = re.compile(
    r"<(?:[a-z_]+(?:\[[a-z_\[\], |]*\])?(?: range)?|[a-z0-9_-]+(?:\|[a-z0-9_-]+)+)>"
)
BRACED_NAME = re.compile(r"\{[a-z_]+\}")


def test_version_needs_no_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "nothing-here"))
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        rf"edgefleet \d+\.\d+\.\d+\S* \(registry schema {SCHEMA_VERSION}\)\n", result.output
    )
    assert not (tmp_path / "nothing-here").exists()


@pytest.mark.parametrize(
    "path", [(), ("device",), ("device", "add"), ("rollout", "start"), ("artifacts", "gc")]
)
def test_dash_h_is_help_everywhere(path: tuple[str, ...]) -> None:
    short = runner.invoke(app, [*path, "-h"], prog_name="edgefleet")
    assert short.exit_code == 0, short.output
    assert "Usage: edgefleet" in short.output
    assert short.output == runner.invoke(app, [*path, "--help"], prog_name="edgefleet").output


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_for_each_shell(shell: str) -> None:
    result = runner.invoke(app, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert "edgefleet" in result.output
    assert "_EDGEFLEET_COMPLETE" in result.output


def test_completion_answers_what_the_script_asks() -> None:
    """The bash script runs `edgefleet` with these variables; it must offer the commands."""
    env = {"_EDGEFLEET_COMPLETE": "complete_bash", "COMP_WORDS": "edgefleet mod", "COMP_CWORD": "1"}
    result = runner.invoke(app, [], env=env, prog_name="edgefleet")
    assert result.output.split() == ["model"]
    env |= {"COMP_WORDS": "edgefleet model ", "COMP_CWORD": "2"}
    result = runner.invoke(app, [], env=env, prog_name="edgefleet")
    assert {"add", "list", "remove", "show"} <= set(result.output.split())


def test_an_unknown_shell_is_refused() -> None:
    result = runner.invoke(app, ["completion", "tcsh"])
    assert result.exit_code == 2


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "edgefleet" for p in COMMANDS])
def test_help_shows_placeholders_not_type_names(path: tuple[str, ...]) -> None:
    text = _help(*path)
    assert TYPE_NAME.findall(text) == []
    assert BRACED_NAME.findall(text) == []


def test_placeholders_say_what_to_type() -> None:
    deploy = _help("deploy")
    assert "Usage: edgefleet deploy [OPTIONS] NAME:VERSION" in deploy
    assert re.search(r"--label\s+-l\s+KEY=VALUE", deploy)
    assert re.search(r"--profile\s+-p\s+PROFILE", deploy)
    assert not re.search(r"--json\s+\S*[A-Z]{3}", deploy)  # a flag takes no value
    start = _help("rollout", "start")
    assert "rollback|hold" in start  # choices are listed


def test_device_add_json(cli: Cli, initialised: Path, tmp_path: Path) -> None:
    result = cli.ok("device", "add", "pi-1", "--profile", "rpi4", "-l", "site=lab", "--json")
    printed = json.loads(result.stdout)
    assert printed["device"]["name"] == "pi-1"
    assert printed["device"]["labels"] == {"site": "lab"}
    assert 'device_id = "pi-1"' in printed["agent_config"]
    assert printed["written_to"] is None
    out = tmp_path / "pi-2.toml"
    written = json.loads(
        cli.ok("device", "add", "pi-2", "--profile", "rpi4", "--out", str(out), "--json").stdout
    )
    assert written["agent_config"] is None  # the secrets are in the file, not on stdout
    assert written["written_to"] == str(out)
    assert 'device_id = "pi-2"' in out.read_text()
