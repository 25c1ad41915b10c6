"""The public surface of edgefleet.controller: exactly what `__all__` lists."""

from __future__ import annotations

import edgefleet.controller as controller
from edgefleet.harness import public_names, ruff_order


def test_all_is_sorted_and_unique() -> None:
    names = list(controller.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=ruff_order)


def test_every_name_in_all_exists() -> None:
    assert [n for n in controller.__all__ if not hasattr(controller, n)] == []


def test_every_public_name_is_in_all() -> None:
    assert public_names(controller) - set(controller.__all__) == set()


def test_importing_the_controller_does_not_load_torch() -> None:
    import subprocess
    import sys

    code = "import sys, edgefleet.controller.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
