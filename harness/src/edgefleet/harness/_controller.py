"""The real controller on this machine, for end-to-end tests, the demo and the rollout
benchmark: a private Mosquitto, a temporary EDGEFLEET_HOME, `edgefleet` commands run as
subprocesses, `edgefleet serve` and agent subprocesses, each stopped with SIGTERM (then
killed if it hangs) when the fleet closes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._broker import Broker, free_port, wait_port
from ._waiting import wait_until


class Proc:
    """A subprocess with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT, env=env)

    def signal_stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int:
        self.signal_stop()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._fh.close()
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class ControllerFleet:
    """A temporary edgefleet home with its broker, daemon and agents (in ``workdir``, or a
    temporary folder removed on ``close``)."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="edgefleet-")
        self.tmp = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.broker = Broker(self.tmp / "broker").start()
        self.http_port = free_port()
        self.home = self.tmp / "home"
        self.env = {
            **os.environ,
            "EDGEFLEET_HOME": str(self.home),
            "EDGEFLEET_BROKER_URL": self.broker.url,
            "EDGEFLEET_ARTIFACT_URL": f"http://127.0.0.1:{self.http_port}/artifacts/",
            "COLUMNS": os.environ.get("COLUMNS", "120"),  # rich tables unwrapped in a pipe
        }
        self.env.pop("EDGEFLEET_DATABASE_URL", None)
        self.daemon: Proc | None = None
        self.agents: dict[str, dict[str, Any]] = {}
        self.procs: list[Proc] = []

    # -- the operator's commands ---------------------------------------------------------

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgefleet.controller", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, timeout: float = 120) -> str:
        result = self.run(*args, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"edgefleet {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    def init(self) -> None:
        """`edgefleet init`, with the daemon's HTTP port set to a free one."""
        self.ok("init")
        config = self.home / "config.toml"
        config.write_text(
            re.sub(r"(?m)^http_port = .*$", f"http_port = {self.http_port}", config.read_text())
        )

    def add_device(self, name: str, profile: str, *labels: str) -> Path:
        """`edgefleet device add`; the agent's config and state go in ``<workdir>/<name>/``."""
        out = self.tmp / name / "agent.toml"
        args = ["device", "add", name, "--profile", profile, "--out", str(out)]
        for label in labels:
            args += ["--label", label]
        self.ok(*args, "--state-dir", str(self.tmp / name / "state"))
        self.agents[name] = {"config": out, "port": free_port(), "proc": None}
        return out

    def status(self) -> dict[str, dict[str, Any]]:
        return {d["device"]: d for d in json.loads(self.ok("status", "--json"))}

    def events(self, device: str) -> list[str]:
        return [e["state"] for e in json.loads(self.ok("events", "--device", device, "--json"))]

    # -- processes ---------------------------------------------------------------------

    def start_daemon(self) -> Proc:
        self.daemon = Proc(
            [sys.executable, "-m", "edgefleet.controller", "serve"],
            self.tmp / "serve.log",
            self.env,
        )
        self.procs.append(self.daemon)
        wait_port(self.http_port, timeout=30)
        return self.daemon

    def start_agent(
        self, name: str, telemetry_interval_s: float = 1.0, wait: bool = True, **extra_env: str
    ) -> Proc:
        agent = self.agents[name]
        env = {
            **os.environ,
            **extra_env,
            "EDGEFLEET_AGENT_INFERENCE_PORT": str(agent["port"]),
            "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": str(telemetry_interval_s),
            "EDGEFLEET_AGENT_RECONNECT_MIN_S": "0.2",
            "EDGEFLEET_AGENT_RECONNECT_MAX_S": "2",
        }
        cmd = [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(agent["config"])]
        agent["proc"] = Proc(cmd, self.tmp / name / "agent.log", env)
        self.procs.append(agent["proc"])
        if wait:
            wait_port(agent["port"], timeout=60)
        return agent["proc"]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.agents[name]['port']}"

    def wait_online(self, *names: str, online: bool = True, timeout: float = 30) -> None:
        wait_until(
            lambda: all(self.status()[n]["online"] is online for n in names),
            timeout,
            f"{names} not online={online}",
        )

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.log}\n{p.text()[-chars:]}" for p in self.procs)

    def close(self) -> None:
        # SIGTERM everything first so the agents stop in parallel, then wait for each
        for p in reversed(self.procs):
            p.signal_stop()
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        self.broker.stop()
        if self._tmp:
            self._tmp.cleanup()
