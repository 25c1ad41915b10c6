"""A CLI that starts fast enough for scripts: `edgefleet --help`, `status --json` and
`device list` load none of the heavy libraries (the compression stack, ONNX Runtime, the web
server) that only other commands need. Structural checks in a fresh interpreter, not
timings: the times are in bench/cli_startup.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgefleet.controller as controller

from .conftest import Cli

HEAVY = {"torch", "onnx", "onnxruntime", "uvicorn", "starlette", "fastapi", "numpy"}
LOADED = f"sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r})"


def fresh_python(code: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=False, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_cli_loads_no_heavy_library() -> None:
    assert fresh_python(f"import edgefleet.controller.cli, sys; print({LOADED})") == "[]"


@pytest.mark.parametrize(
    "code",
    [
        "import edgefleet.controller",
        "from edgefleet.controller import Home, open_home, list_devices, fleet_status",
        "from edgefleet.controller.catalog import parse_model_ref, find_version",
        "from edgefleet.controller import rollout",
        "import edgefleet.controller as c; c.fleet.add_devices",  # a sub-package, not imported
    ],
)
def test_the_library_loads_only_what_is_used(code: str) -> None:
    assert fresh_python(f"{code}; import sys; print({LOADED})") == "[]"


def test_importing_the_package_loads_no_sub_package() -> None:
    """`import edgefleet.controller` alone is nearly free: its names load on first use."""
    code = (
        "import edgefleet.controller, sys; "
        "print(sorted(m for m in sys.modules if m.startswith(('sqlalchemy', 'sqlmodel', "
        "'edgefleet.controller.'))))"
    )
    assert fresh_python(code) == "[]"


@pytest.mark.parametrize(
    "args", [["--help"], ["status", "--json"], ["device", "list"], ["device", "list", "--json"]]
)
def test_commands_scripts_run_load_no_heavy_library(
    cli: Cli, initialised: Path, tmp_path: Path, args: list[str]
) -> None:
    cli.ok("device", "add", "pi-1", "--profile", "rpi4", "--out", str(tmp_path / "pi-1.toml"))
    code = (
        "import contextlib, io, sys\n"
        "from edgefleet.controller.cli import app\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    try: app({args!r}, prog_name='edgefleet')\n"
        "    except SystemExit as exit: assert not exit.code, exit.code\n"
        "assert out.getvalue()\n"
        f"print({LOADED})\n"
    )
    assert fresh_python(code, env={**os.environ, "EDGEFLEET_HOME": str(initialised)}) == "[]"


def test_a_name_loads_on_first_use_and_is_the_sub_packages_own() -> None:
    from edgefleet.controller import catalog, fleet, home

    assert controller.open_home is home.open_home
    assert controller.add_device is fleet.add_device
    assert controller.compress_model_version is catalog.compress_model_version
    assert set(controller.__all__) <= set(dir(controller))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = controller.nothing_here  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = catalog.nothing_here  # type: ignore[attr-defined]
