"""A fleet spread over worker processes: many real agents per process, or many simulated
devices per process (``_simfleet``), each worker started in its own process group and
steered with JSON lines on its stdin and stdout.

Real agents: each is the production ``Agent`` (``Agent.from_config`` on the ``agent.toml``
that ``edgefleet device add`` wrote: its own state folder, MQTT session, artifact client,
inference server on an ephemeral 127.0.0.1 port and ONNX Runtime sessions), with its link
wrapped so every command it is handed is noted. A worker of 250 agents holds about 1,250
threads (each agent's MQTT loop, worker, telemetry and inference server, plus the sessions'
thread pools once a model is served).

A worker is ``main(["agents" or "sim", "--configs", LIST])`` (LIST: one agent.toml path a
line) in a fresh interpreter; it waits for orders on stdin.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgefleet import shared
from edgefleet.agent import Inbound, Link, Outbound, load_config
from edgefleet.shared import DeployCommand, Manifest, RollbackCommand, RollbackOrder
from edgefleet.shared.errors import MessageError

from ._simfleet import SimTimings
from ._simfleet_loop import SimLoop, SimOptions, emit

log = logging.getLogger("edgefleet.harness.simfleet")
# the worker's command line (not `-m`: the harness package imports this module first)
_WORKER = "import sys; from edgefleet.harness._simfleet_procs import main; main(sys.argv[1:])"


def command_receipt(payload: bytes) -> list[object]:
    """A command as the device received it (see ``_simfleet.Receipt``), read without
    verifying it: the agent verifies; this only names it."""
    digest = hashlib.sha256(payload).hexdigest()[:16]
    deployment_id, sequence, kind = "", 0, "garbage"
    try:
        command = shared.decode(payload)
        kind = command.kind
        if isinstance(command, DeployCommand | RollbackCommand):
            doc = shared.parse_signed_document(command.signed.payload_bytes())
            if isinstance(doc, Manifest | RollbackOrder):
                deployment_id, sequence = doc.deployment_id, doc.sequence
    except MessageError:
        pass
    return [deployment_id, sequence, digest, kind, time.time()]


class RecordingLink:
    """The agent's own link, noting every command it hands the agent and when the agent
    first came online (its birth message asked for)."""

    def __init__(self, inner: Link) -> None:
        self.inner = inner
        self.received: list[list[object]] = []
        self.online = threading.Event()

    def start(
        self,
        *,
        on_message: Callable[[Inbound], None],
        birth: Callable[[], Outbound],
        will: Callable[[], Outbound],
    ) -> None:
        def received(message: Inbound) -> None:
            self.received.append(command_receipt(message.payload))
            on_message(message)

        def born() -> Outbound:
            self.online.set()
            return birth()

        self.inner.start(on_message=received, birth=born, will=will)

    def publish(self, message: Outbound) -> None:
        self.inner.publish(message)

    def stop(self, farewell: Outbound | None = None) -> None:
        self.inner.stop(farewell)


def run_agents(configs: list[Path], overrides: dict[str, str], max_seconds: float) -> None:
    """Start an ``Agent`` per config in this process and serve orders from stdin."""
    from edgefleet.agent import Agent  # loads ONNX Runtime and paho: only in the worker

    started = time.monotonic()
    agents = []
    for path in configs:
        agent = Agent.from_config(load_config(path, env=overrides))
        link = RecordingLink(agent.link)
        agent.link = link
        agent.start()
        agents.append((agent, link))
    deadline = time.monotonic() + 300
    while not all(link.online.is_set() for _, link in agents) and time.monotonic() < deadline:
        time.sleep(0.05)
    emit({"op": "ready", "devices": sum(link.online.is_set() for _, link in agents)})
    done = threading.Event()

    def progress() -> None:
        while not done.wait(1.0):
            emit({"op": "progress", "connected": sum(link.inner.connected  # type: ignore[attr-defined]
                                                     for _, link in agents)})  # fmt: skip

    threading.Thread(target=progress, daemon=True).start()
    # bounded whatever the parent does: the process ends by itself after max_seconds
    limit = threading.Timer(max(0.0, max_seconds - (time.monotonic() - started)), os._exit, (3,))
    limit.daemon = True
    limit.start()
    for line in sys.stdin:
        op = json.loads(line).get("op") if line.strip() else None
        if op == "report":
            emit({"op": "report", "devices": {a.config.device_id: _agent_summary(a, link)
                                              for a, link in agents}})  # fmt: skip
        elif op == "stop":
            break
    done.set()
    with ThreadPoolExecutor(32) as pool:  # each stop waits for threads: in parallel
        list(pool.map(lambda pair: pair[0].stop(), agents))
    emit({"op": "stopped"})


def _agent_summary(agent: Any, link: RecordingLink) -> dict[str, object]:
    active = agent.state.active
    return {
        "received": list(link.received),
        "serving": active.deployment_id if active else None,
        "last_sequence": agent.state.last_sequence,
        "inference_url": agent.server.url,
    }


def run_sims(configs: list[Path], options: SimOptions) -> None:
    loaded = [load_config(path, env={}) for path in configs]
    SimLoop(loaded, options, emit).run(sys.stdin.fileno())


class FleetWorkers:
    """``processes`` workers sharing ``configs`` (agent.toml paths) between them: real
    agents (``kind="agents"``) or simulated devices (``kind="sim"``). ``options`` go to
    every worker: for agents, ``EDGEFLEET_AGENT_*`` overrides (``inference_port`` is 0:
    ephemeral); for sims, ``SimOptions`` fields (``timings`` as a ``SimTimings``)."""

    def __init__(
        self,
        kind: str,
        configs: Sequence[Path],
        *,
        processes: int,
        workdir: Path,
        options: dict[str, Any] | None = None,
    ) -> None:
        if kind not in ("agents", "sim"):
            raise ValueError(f"no worker kind {kind!r}: agents or sim")
        self.kind = kind
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        chunks = [list(configs[i::processes]) for i in range(processes)]
        self.shares = [c for c in chunks if c]
        opts = dict(options or {})
        if isinstance(opts.get("timings"), SimTimings):
            opts["timings"] = asdict(opts["timings"])
        self.options = opts
        self.procs: list[subprocess.Popen[bytes]] = []
        self.inboxes: list[queue.Queue[dict[str, Any]]] = []
        self.latest: list[dict[str, Any]] = []

    def start(self, timeout: float = 300.0) -> FleetWorkers:
        """Start every worker; return once each says every device of its share is online."""
        for n, share in enumerate(self.shares):
            listing = self.workdir / f"worker-{n}.list"
            listing.write_text("".join(f"{p}\n" for p in share))
            log_file = open(self.workdir / f"worker-{n}.log", "ab")  # noqa: SIM115 - the child's
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER, self.kind,
                 "--configs", str(listing), "--options", json.dumps(self.options)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                start_new_session=True,  # its own process group: killed whole on close
            )  # fmt: skip
            log_file.close()
            inbox: queue.Queue[dict[str, Any]] = queue.Queue()
            self.procs.append(proc)
            self.inboxes.append(inbox)
            self.latest.append({})
            threading.Thread(target=self._read, args=(n, proc, inbox), daemon=True).start()
        self._answers("ready", timeout)
        return self

    def _read(
        self, n: int, proc: subprocess.Popen[bytes], inbox: queue.Queue[dict[str, Any]]
    ) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with contextlib.suppress(ValueError):
                message = json.loads(raw)
                if message.get("op") == "progress":
                    self.latest[n] = message
                else:
                    inbox.put(message)
        inbox.put({"op": "exited", "code": proc.wait()})

    def _send(self, order: dict[str, Any]) -> None:
        line = (json.dumps(order) + "\n").encode()
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError, OSError):
                    proc.stdin.write(line)
                    proc.stdin.flush()

    def _answers(self, op: str, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        answers = []
        for n, inbox in enumerate(self.inboxes):
            while True:
                try:
                    message = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError(f"worker {n} did not answer {op!r} in {timeout}s; "
                                       f"see {self.workdir}/worker-{n}.log") from None  # fmt: skip
                if message.get("op") == op:
                    answers.append(message)
                    break
                if message.get("op") == "exited":
                    raise RuntimeError(f"worker {n} exited ({message['code']}); "
                                       f"see {self.workdir}/worker-{n}.log")  # fmt: skip
        return answers

    def report(self, timeout: float = 120.0) -> dict[str, dict[str, Any]]:
        """Every device's summary: the commands it received, what it serves."""
        self._send({"op": "report"})
        merged: dict[str, dict[str, Any]] = {}
        for answer in self._answers("report", timeout):
            merged.update(answer["devices"])
        return merged

    def telemetry(self, rate: float, seconds: float) -> None:
        """Simulated devices: ``rate`` telemetry messages a second, fleet-wide, for
        ``seconds``; ``telemetry_done`` waits for the end."""
        self._send({"op": "telemetry", "rate": rate / len(self.procs), "seconds": seconds})

    def telemetry_done(self, timeout: float) -> int:
        return sum(int(a["sent"]) for a in self._answers("telemetry", timeout))

    def progress(self) -> dict[str, int]:
        """The workers' latest counters, summed (connected devices, messages published…)."""
        total: dict[str, int] = {}
        for latest in self.latest:
            for key, value in latest.items():
                if isinstance(value, int):
                    total[key] = total.get(key, 0) + value
        return total

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self, timeout: float = 60.0) -> None:
        self._send({"op": "stop"})
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        self.procs.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one worker of a benchmark fleet")
    parser.add_argument("kind", choices=["agents", "sim"])
    parser.add_argument("--configs", type=Path, required=True, help="agent.toml paths, one a line")
    parser.add_argument("--options", default="{}", help="JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    configs = [Path(p) for p in args.configs.read_text().split()]
    options = json.loads(args.options)
    max_seconds = float(options.pop("max_seconds", 3600.0))
    if args.kind == "agents":
        overrides = {"EDGEFLEET_AGENT_INFERENCE_PORT": "0"}
        overrides |= {f"EDGEFLEET_AGENT_{k.upper()}": str(v) for k, v in options.items()}
        run_agents(configs, overrides, max_seconds)
    else:
        timings = SimTimings(**options.pop("timings", {}))
        run_sims(configs, SimOptions(timings=timings, max_seconds=max_seconds, **options))
