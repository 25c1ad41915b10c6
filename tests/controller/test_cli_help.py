"""Every command and option of ``edgefleet`` says what it does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from edgefleet.controller.cli import app


def _walk(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(get_command(app)))


def test_the_expected_commands_exist() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    expected = {
        "init",
        "device add", "device list", "device show", "device remove",
        "model add", "model list", "model show",
        "profile list", "profile show",
        "deploy", "status", "events", "serve", "rollback",
        "rollout start", "rollout list", "rollout status", "rollout analysis",
        "rollout pause", "rollout resume", "rollout promote", "rollout abort",
    }  # fmt: skip
    assert expected <= names


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "edgefleet" for p, _ in COMMANDS]
)
def test_command_has_help(path: tuple[str, ...], command: typer.core.TyperCommand) -> None:
    assert (command.help or "").strip(), f"{' '.join(path)} has no help text"
    for param in command.params:
        if param.name in ("help",):
            continue
        assert (getattr(param, "help", None) or "").strip(), f"{path}: --{param.name} has no help"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
