"""The controller's layout: sub-packages named after the fleet's nouns, each offering its
names in `__init__`, and no module reaching into another package's private modules or
importing a private name from anywhere."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import edgefleet.agent
import edgefleet.controller
import edgefleet.shared
from edgefleet.harness import public_names, ruff_order

PACKAGES = [
    "registry",
    "home",
    "fleet",
    "catalog",
    "rollout",
    "keys",
    "daemon",
    "mqtt",
    "cli",
    "compress",
]
SOURCES = {
    "controller": Path(edgefleet.controller.__file__).parent,
    "agent": Path(edgefleet.agent.__file__).parent,
    "shared": Path(edgefleet.shared.__file__).parent,
}
# The one module of the controller package itself that its sub-packages share: a leaf
# (it imports nothing of edgefleet) holding the one-line error text helper.
SHARED_LEAVES = {"_text"}


@pytest.mark.parametrize("name", PACKAGES)
def test_each_sub_package_offers_exactly_its_all(name: str) -> None:
    package = importlib.import_module(f"edgefleet.controller.{name}")
    names = list(package.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=ruff_order)
    assert [n for n in names if not hasattr(package, n)] == []
    assert public_names(package) - set(names) == set()
    assert (package.__doc__ or "").strip(), f"{name} says what it is for"


def _imports(root: Path) -> list[tuple[Path, ast.ImportFrom]]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                found.append((path, node))
    return found


@pytest.mark.parametrize("part", sorted(SOURCES))
def test_no_private_name_is_imported_from_another_module(part: str) -> None:
    offenders = [
        f"{path.relative_to(SOURCES[part])}:{node.lineno} {alias.name}"
        for path, node in _imports(SOURCES[part])
        for alias in node.names
        if node.module is not None  # `from . import _mod` names a module, not a name in one
        and alias.name.startswith("_")
        and not alias.name.startswith("__")
    ]
    assert offenders == []


def test_packages_import_each_other_only_through_their_init() -> None:
    root = SOURCES["controller"]
    offenders = []
    for path, node in _imports(root):
        here = path.relative_to(root).parts[:-1]  # () for the controller package itself
        if node.level == 0:
            target = (node.module or "").split(".")
            if target[:2] == ["edgefleet", "controller"] and any(
                part.startswith("_") for part in target[2:]
            ):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
            continue
        base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
        target = [*base, *(node.module or "").split(".")] if node.module else list(base)
        if target[: len(here)] == list(here) and len(target) == len(here) + 1:
            continue  # a sibling module of the same package
        private = [part for part in target if part.startswith("_")]
        if private and not (len(target) == 1 and target[0] in SHARED_LEAVES):
            offenders.append(f"{path.relative_to(root)}:{node.lineno} from {'.'.join(target)}")
    assert offenders == []


def test_no_module_is_over_400_lines() -> None:
    long = {
        f"{part}/{path.relative_to(root)}": n
        for part, root in SOURCES.items()
        for path in root.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert long == {}
