"""``edgefleet-agent``: run the agent, or check a config file, from the command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from edgefleet.shared import redacted_url
from edgefleet.shared.errors import EdgefleetError

from ._config import AgentConfig, load_config

VERSION = "0.1.0"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet-agent",
        description="The edgefleet device agent: receives signed deployments over MQTT, "
        "verifies and hot-swaps ONNX models, serves local inference and reports telemetry.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet-agent {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the agent until SIGTERM or Ctrl-C",
        description="Run the agent until SIGTERM or Ctrl-C.",
    )
    check = sub.add_parser(
        "check-config",
        help="validate a config file and print it",
        description="Validate a config file (and environment overrides) "
        "and print the settings, secrets hidden.",
    )
    for p in (run, check):
        p.add_argument(
            "--config",
            "-c",
            type=Path,
            required=True,
            help="path to agent.toml; EDGEFLEET_AGENT_<SETTING> variables override it",
        )
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="override the config's log_level",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except EdgefleetError as exc:
        print(f"edgefleet-agent: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(_describe(config))
        return 0
    level = (args.log_level or config.log_level).upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return _run(config)


def _run(config: AgentConfig) -> int:
    from ._agent import Agent  # imported late so `--help` stays fast

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        agent = Agent.from_config(config)
        agent.start()
    except EdgefleetError as exc:
        print(f"edgefleet-agent: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the inference port is taken
        print(f"edgefleet-agent: error: {exc}", file=sys.stderr)
        return 1
    done.wait()
    agent.stop()
    return 0


def _describe(config: AgentConfig) -> str:
    hidden = {"broker_password", "artifact_token"}
    lines = []
    for name, value in vars(config).items():
        shown = "***" if name in hidden and value else value
        if isinstance(shown, str) and "://" in shown:
            shown = redacted_url(shown)
        lines.append(f"{name} = {shown!s}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
