"""The Grafana dashboard in deploy/grafana/ against a real Prometheus scraping a real
`edgefleet serve` with real agents: every panel's every query returns data."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.harness import Prometheus, mosquitto_binary, prometheus_binary, wait_until

from .running_fleet import RunningFleet

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "edgefleet.json"
# what Grafana puts in place of its variables when a panel runs
VARIABLES = {"$__rate_interval": "20s", "$model": ".*", "$profile": ".*"}


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert titles == [
        "Fleet overview",
        "Latency per model version and profile",
        "Rollouts",
        "Device health",
    ]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "model", "profile"]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningFleet, Prometheus]]:
    for binary in (mosquitto_binary, prometheus_binary):
        try:
            binary()
        except RuntimeError as exc:  # pragma: no cover - `make setup` installs both
            pytest.skip(str(exc))
    tmp = tmp_path_factory.mktemp("dashboard")
    fleet = RunningFleet(tmp / "fleet")
    prometheus = Prometheus(tmp / "prometheus", [f"127.0.0.1:{fleet.http_port}"])
    try:
        fleet.start()
        prometheus.start()
        wait_until(prometheus.targets_up, 30, "prometheus never scraped serve")
        yield fleet, prometheus
    finally:
        prometheus.stop()
        fleet.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("panel", panels(), ids=lambda p: re.sub(r"\W+", "-", p["title"]))
def test_every_panel_returns_data(
    scraped: tuple[RunningFleet, Prometheus], panel: dict[str, Any]
) -> None:
    fleet, prometheus = scraped
    for target in panel["targets"]:
        expr = expand(target["expr"])

        def answered(e: str = expr) -> list[dict[str, Any]]:
            return prometheus.query(e)

        try:
            wait_until(answered, 60, f"no data for {expr}")
        except TimeoutError:
            pytest.fail(f"{panel['title']}: no data for {expr}\n{fleet.logs(1500)}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_variables_list_what_the_fleet_runs(
    scraped: tuple[RunningFleet, Prometheus],
) -> None:
    _, prometheus = scraped
    models = wait_until(
        lambda: prometheus.query("count by (model) (edgefleet_inference_requests_total)"), 60, "m"
    )
    assert [r["metric"]["model"] for r in models] == ["digits"]
    profiles = prometheus.query("count by (profile) (edgefleet_profile_devices)")
    assert sorted(r["metric"]["profile"] for r in profiles) == ["rpi4", "rpi5", "x86-edge"]
    p95 = prometheus.query(
        expand(
            "histogram_quantile(0.95, sum by (le, profile) "
            "(rate(edgefleet_inference_latency_seconds_bucket[$__rate_interval])))"
        )
    )
    assert p95 and all(0 < float(r["value"][1]) < 10 for r in p95 if r["value"][1] != "NaN")
