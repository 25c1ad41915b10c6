"""A private Prometheus (Debian's `prometheus`) for tests and benchmarks: free loopback port,
generated config scraping the given targets every second, its data in a work folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from ._broker import free_port, wait_port
from ._waiting import wait_until


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise RuntimeError("prometheus is not installed; run `make setup`")
    return found


class Prometheus:
    """One prometheus process scraping ``targets`` (``host:port``) at ``metrics_path``."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        *,
        metrics_path: str = "/metrics",
        scrape_interval: str = "1s",
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        config = {  # JSON is YAML
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [
                {
                    "job_name": "edgefleet",
                    "metrics_path": metrics_path,
                    "static_configs": [{"targets": targets}],
                }
            ],
        }
        self.config.write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 - Popen keeps it
        self.proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_port(self.port, timeout=30)
        wait_until(self._ready, 30, "prometheus never became ready")
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (``data.result``); raises on a query error."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{expr}: {body.get('error', answer.text)}")
        return list(body["data"]["result"])

    def targets_up(self) -> bool:
        return any(float(r["value"][1]) == 1 for r in self.query('up{job="edgefleet"}'))

    def log_text(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
