"""The public surface of edgefleet.agent: what `__all__` lists is what the package offers."""

from __future__ import annotations

import json
import subprocess
import sys

import edgefleet.agent
from edgefleet.harness import public_names, ruff_order

# imported by __init__ for its own annotations and lazy loading, not offered
_TYPING_HELPERS = {"TYPE_CHECKING", "Any"}


def test_all_is_sorted_and_unique() -> None:
    names = list(edgefleet.agent.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=ruff_order)


def test_every_name_in_all_exists() -> None:
    assert [n for n in edgefleet.agent.__all__ if not hasattr(edgefleet.agent, n)] == []


def test_every_public_name_is_in_all() -> None:
    public = public_names(edgefleet.agent) - _TYPING_HELPERS
    assert public - set(edgefleet.agent.__all__) == set()


def test_importing_the_package_stays_light() -> None:
    """The runtime and MQTT load only when an Agent is used, so `--help` and config checks are
    fast on a small board."""
    script = (
        "import json, sys; import edgefleet.agent; "
        "from edgefleet.agent import Inbound, Link, Outbound, AgentConfig; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert {"onnxruntime", "paho", "numpy"} & loaded == set()
