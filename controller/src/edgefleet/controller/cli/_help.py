"""Help that says what to type: Typer prints each parameter's Python type (``<bool>``,
``<list[str]>``, ``<float range>``) and a required argument's name in braces (``{ref}``).
Here every value gets a placeholder instead, as argparse and click print them: the
declaration's ``metavar`` when it has one, else the choices (``rollback|hold``) or the
parameter's name in capitals (``--profile PROFILE``); a flag gets none.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperOption


class _Argument(TyperArgument):
    """An argument shown in the usage line as ``REF`` (required) or ``[REF]``, not ``{ref}``."""

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.metavar or (self.name or "").upper()
        if self.nargs != 1:
            name += "..."
        return [name if self.required else f"[{name}]"]

    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the name column already shows the placeholder


def make_readable(command: Any, help_option_names: list[str]) -> None:
    """Give every parameter below ``command`` a readable placeholder, once, where its
    declaration did not choose one."""
    for param in command.params:
        if isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = (param.name or "").upper()
            param.__class__ = _Argument  # the usage line; everything else is Typer's
        elif isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag else _placeholder(param)
    # --help is made on first use; make it now, so it shows no <bool> either
    ctx = typer.Context(command, help_option_names=help_option_names)
    help_option = command.get_help_option(ctx)
    if isinstance(help_option, TyperOption):
        help_option.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        make_readable(sub, help_option_names)


def _placeholder(option: TyperOption) -> str:
    described = getattr(option, "type_descriptor", None)
    choices = getattr(described, "choices", None) if described is not None else None
    if getattr(described, "is_choice", False) and choices:
        return "|".join(str(getattr(c, "value", c)) for c in choices)
    return (option.name or "value").upper()
