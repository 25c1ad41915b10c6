"""The tree drawn in errors.py's docstring is the class tree: each class under its parent."""

from __future__ import annotations

import inspect
import re

from edgefleet.shared import errors

_BRANCH = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )?(?P<name>[A-Z]\w+)")


def _drawn_tree() -> dict[str, str | None]:
    """Class name -> parent name, read from the drawing in the module docstring."""
    doc = errors.__doc__ or ""
    lines = [line[4:] for line in doc.splitlines() if line.startswith("    ") and line.strip()]
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in lines:
        match = _BRANCH.match(line)
        assert match, f"not a line of the tree: {line!r}"
        depth = len(match["indent"]) // 4 + (0 if line[0].isalpha() else 1)
        name = match["name"]
        assert name not in parents, f"{name} is drawn twice"
        del path[depth:]
        assert len(path) == depth, f"{name} is indented under nothing"
        parents[name] = path[-1] if path else None
        path.append(name)
    return parents


def _class_tree() -> dict[str, str | None]:
    classes = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.EdgefleetError)
    ]
    return {
        cls.__name__: None if cls is errors.EdgefleetError else cls.__base__.__name__
        for cls in classes
    }


def test_docstring_draws_the_class_tree() -> None:
    assert _drawn_tree() == _class_tree()


def test_every_class_in_the_tree_is_exported() -> None:
    assert set(_class_tree()) == set(errors.__all__)
