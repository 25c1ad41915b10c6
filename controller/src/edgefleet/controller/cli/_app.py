"""The ``edgefleet`` application: the Typer app and its sub-apps per noun, the global
options, and how edgefleet's own errors become one line on stderr and an exit code.

Each command parses its arguments, calls one service function and renders the result
(a rich table, or JSON with ``--json``). Expected failures print ``error: <message>`` on
stderr and exit 2 (bad usage or input) or 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from edgefleet.shared.errors import ConfigError, EdgefleetError, ModelError, NotFound

from ..home import Home, Settings, load_settings, open_home
from ..registry import SCHEMA_VERSION
from ._help import make_readable

EXIT_FAILURE = 1
EXIT_USAGE = 2
# the invocation was wrong (a bad value, a name that does not exist, a file that is not a model)
_USAGE_ERRORS = (ConfigError, ModelError, NotFound)


HELP_OPTIONS = ["-h", "--help"]


class _Group(TyperGroup):
    """Turns edgefleet's own errors into one line on stderr and an exit code, anywhere below;
    and gives every parameter below a readable placeholder in the help (``_help``)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # here rather than in __init__: Typer appends the completion options afterwards
        make_readable(self, HELP_OPTIONS)
        return super().main(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except EdgefleetError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            code = EXIT_USAGE if isinstance(exc, _USAGE_ERRORS) else EXIT_FAILURE
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=_Group,
    help="edgefleet: roll ML models out to fleets of edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # --install-completion and --show-completion; `edgefleet completion SHELL` prints the
    # script without guessing the shell
    add_completion=True,
    context_settings={"help_option_names": HELP_OPTIONS},  # every command below inherits -h
)
device_app = typer.Typer(help="Enrol, list, show and remove devices.", no_args_is_help=True)
model_app = typer.Typer(help="Add, list and show models and their versions.", no_args_is_help=True)
profile_app = typer.Typer(help="List and show device profiles.", no_args_is_help=True)
broker_app = typer.Typer(help="Files for the MQTT broker (Mosquitto).", no_args_is_help=True)
tls_app = typer.Typer(help="The private CA and certificate for TLS.", no_args_is_help=True)
key_app = typer.Typer(
    help="The signing keys: list them, rotate them on every device.", no_args_is_help=True
)
app.add_typer(device_app, name="device")
app.add_typer(model_app, name="model")
app.add_typer(profile_app, name="profile")
app.add_typer(broker_app, name="broker")
app.add_typer(tls_app, name="tls")
app.add_typer(key_app, name="key")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.callback()
def _options(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar="EDGEFLEET_HOME",
            help="The edgefleet home folder (config, keys, registry, artifacts).",
            show_default="~/.edgefleet",
        ),
    ] = None,
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print edgefleet's version and the registry schema it needs, and exit.",
            is_eager=True,
            callback=lambda value: _print_version(value),
        ),
    ] = False,
) -> None:
    """edgefleet: roll ML models out to fleets of edge devices."""
    ctx.obj = home  # settings are read lazily, so --help works even with a broken config


def controller_version() -> str:
    """The installed edgefleet-controller's version."""
    try:
        return version("edgefleet-controller")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from .. import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"edgefleet {controller_version()} (registry schema {SCHEMA_VERSION})")
        raise typer.Exit()


def settings_of(ctx: typer.Context) -> Settings:
    return load_settings(ctx.find_root().obj)


@contextmanager
def opened_home(ctx: typer.Context) -> Iterator[Home]:
    home = open_home(settings_of(ctx))
    try:
        yield home
    finally:
        home.close()
