"""A private Mosquitto for tests, benchmarks and the demo: free port, generated config,
kill and restart."""

from __future__ import annotations

import contextlib
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


# Mosquitto's own default: a stock install writes its memory to disk every half hour, so a
# SIGKILL loses everything since (in a test, everything since the broker started)
STOCK_AUTOSAVE_S = 1800


class Broker:
    """One mosquitto process with persistence, so a restart keeps sessions and queues.

    ``autosave_interval``: seconds between writes of the broker's memory to disk (what a
    SIGKILL loses at most); 1 by default, ``STOCK_AUTOSAVE_S`` for a stock install's. Read
    at every start, so a test may change it between a stop and the next start."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        include_dir: Path | None = None,
        *,
        autosave_interval: int = 1,
    ) -> None:
        """``include_dir``: a folder of *.conf files (e.g. `edgefleet broker config`'s) that
        decide who may connect, and whose settings win over the ones here; without it,
        anyone may."""
        self.workdir = workdir
        self.port = port or free_port()
        self.include_dir = include_dir
        self.autosave_interval = autosave_interval
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self._write_conf()

    def _write_conf(self) -> None:
        # `edgefleet broker config`'s files define the listener themselves (on the port of
        # the broker_url they were made for: pass the same port here); included last, their
        # settings (persistence, queues) are the ones in force, as in production
        access = (
            f"include_dir {self.include_dir}\n"
            if self.include_dir
            else f"allow_anonymous true\nlistener {self.port} 127.0.0.1\n"
        )
        # as root, Mosquitto drops to its own user before it reads password and ACL files
        # and writes its persistence file, none of which it could reach inside pytest's
        # private tmp folders; `user root` keeps it as it is (an ordinary user ignores it)
        self.conf.write_text(
            "user root\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            f"autosave_interval {self.autosave_interval}\n"
            "max_queued_messages 200000\n"  # as `edgefleet broker config`'s
            "max_inflight_messages 100\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + access
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self._write_conf()
        proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.proc = proc

        def listening() -> bool:
            if proc.poll() is not None:  # a bad config or a taken port: no use waiting
                raise RuntimeError(self._failed(f"mosquitto exited with {proc.returncode}"))
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return True
            return False

        try:
            wait_until(listening, 10.0, f"nothing listens on 127.0.0.1:{self.port}", every=0.02)
        except TimeoutError as exc:
            self.stop(kill=True)
            raise RuntimeError(self._failed(str(exc))) from None
        return self

    def _failed(self, why: str) -> str:
        tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
        return f"{why}; its log ends:\n{tail}"

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, kill: bool = False, down_for: float = 0.0) -> None:
        self.stop(kill=kill)
        time.sleep(down_for)
        self.start()
