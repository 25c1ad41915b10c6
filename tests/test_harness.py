"""The development harness: its public surface, that the demo and the benchmarks need
nothing from tests/, and that no shipped distribution depends on it."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest

import edgefleet.harness as harness
from edgefleet.harness import public_names, ruff_order

REPO = Path(__file__).resolve().parents[1]

# Loads a script's top level (its imports, not main()) and prints every module it brought
# in from the repository's tests/ folder, and whether it touched sys.path. Run from the
# repository root, where `import tests...` would succeed, so a test import is seen, not
# merely failed.
_IMPORTS = """
import json, runpy, sys
from pathlib import Path
tests = Path.cwd().resolve() / "tests"
path_before = list(sys.path)
runpy.run_path(sys.argv[1], run_name="imported_by_a_test")
found = sorted(
    name for name, module in list(sys.modules.items())
    if name == "tests" or name.startswith("tests.") or name == "conftest"
    or tests in Path(getattr(module, "__file__", None) or "/").resolve().parents
)
print(json.dumps({"test_modules": found, "sys_path_changed": sys.path != path_before}))
"""


def test_all_is_sorted_unique_and_complete() -> None:
    names = list(harness.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=ruff_order)
    assert [n for n in names if not hasattr(harness, n)] == []
    assert public_names(harness) - set(names) == set()


def test_the_demo_imports_no_test_module_and_leaves_sys_path_alone() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS, str(REPO / "bench" / "demo.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "test_modules": [],
        "sys_path_changed": False,
    }


@pytest.mark.parametrize(
    "distribution", ["edgefleet-shared", "edgefleet-agent", "edgefleet-controller"]
)
def test_no_shipped_distribution_depends_on_the_harness(distribution: str) -> None:
    assert not [r for r in requires(distribution) or [] if r.startswith("edgefleet-harness")]
