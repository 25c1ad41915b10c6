"""What a package's `__all__` must match: its public names, in ruff's RUF022 order."""

from __future__ import annotations
import __future__

from types import ModuleType


def public_names(module: ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, ModuleType)
        and not isinstance(value, type(__future__.annotations))  # a __future__ import
    }


def ruff_order(name: str) -> tuple[int, str]:
    """RUF022's order, which the linter enforces: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2), name
