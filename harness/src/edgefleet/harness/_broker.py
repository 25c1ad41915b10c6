"""A private Mosquitto for tests, benchmarks and the demo: free port, generated config,
kill and restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ._waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    def listening() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_until(listening, timeout, f"nothing listens on {host}:{port}", every=0.02)


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if not found:
        raise RuntimeError("mosquitto is not installed; run `make setup`")
    return found


class Broker:
    """One mosquitto process with persistence, so a restart keeps sessions and queues."""

    def __init__(
        self, workdir: Path, port: int | None = None, include_dir: Path | None = None
    ) -> None:
        """``include_dir``: a folder of *.conf files (e.g. `edgefleet broker config`'s) that
        decide who may connect; without it, anyone may."""
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        # as root, Mosquitto drops to its own user before reading password and ACL files,
        # which it could not reach inside pytest's private tmp folders
        # `edgefleet broker config`'s files define the listener themselves (on the port of
        # the broker_url they were made for: pass the same port here)
        access = (
            f"include_dir {include_dir}\nuser root\n"
            if include_dir
            else f"allow_anonymous true\nlistener {self.port} 127.0.0.1\n"
        )
        self.conf.write_text(
            access + "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 10000\n"
            "max_inflight_messages 100\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, kill: bool = False, down_for: float = 0.0) -> None:
        self.stop(kill=kill)
        time.sleep(down_for)
        self.start()
