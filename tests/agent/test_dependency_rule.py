"""The agent never loads torch, sqlalchemy, sqlmodel, typer or controller code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

FORBIDDEN = ("torch", "sqlalchemy", "sqlmodel", "typer", "edgefleet.controller")


@pytest.mark.slow  # starts the agent in a subprocess
def test_importing_and_starting_the_agent_loads_nothing_forbidden(tmp_path, broker):
    from edgefleet import shared

    key = shared.public_key_to_text(shared.generate_private_key().public_key())
    config = tmp_path / "agent.toml"
    config.write_text(
        textwrap.dedent(f"""
        device_id = "dep-rule"
        broker_url = "{broker.url}"
        artifact_base_url = "http://127.0.0.1:9/"
        trusted_keys = ["{key}"]
        state_dir = "{tmp_path / "state"}"
        inference_port = 0
    """)
    )
    script = textwrap.dedent(f"""
        import json, sys
        import edgefleet.agent
        from edgefleet.agent import Agent, load_config
        from pathlib import Path
        agent = Agent.from_config(load_config(Path({str(config)!r})))
        agent.start()
        ok = agent.link.wait_connected(10)
        agent.stop()
        print(json.dumps({{"connected": ok, "modules": sorted(sys.modules)}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["connected"]
    loaded = [
        m for m in result["modules"] if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert loaded == []
    assert "onnxruntime" in result["modules"]  # it really started


def test_agent_distribution_does_not_depend_on_heavy_packages():
    from importlib.metadata import requires

    deps = " ".join(requires("edgefleet-agent") or []).lower()
    for name in ("torch", "sqlalchemy", "sqlmodel", "typer", "edgefleet-controller"):
        assert name not in deps
