"""The public surface of edgefleet.controller.compress: exactly what `__all__` lists."""

from __future__ import annotations

import subprocess
import sys

import edgefleet.controller.compress as compress_pkg
from edgefleet.harness import public_names, ruff_order


def test_all_is_sorted_unique_and_complete() -> None:
    names = list(compress_pkg.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=ruff_order)
    assert [n for n in names if not hasattr(compress_pkg, n)] == []
    assert public_names(compress_pkg) - set(names) == set()


def test_importing_compress_does_not_load_torch() -> None:
    code = "import sys, edgefleet.controller.compress; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
