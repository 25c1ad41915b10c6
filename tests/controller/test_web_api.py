"""The fleet page's rules and the /api/v1 answers, over real HTTP to the daemon's server and a
real registry: who may reach it, the token and the login cookie, the JSON shapes."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from edgefleet.controller import Home
from edgefleet.controller import deploy as record_deployment
from edgefleet.controller.catalog import add_model
from edgefleet.controller.daemon import ArtifactServer, FleetWeb, ingest_many, registry_token_check
from edgefleet.controller.fleet import add_device
from edgefleet.controller.registry import DeviceCreate
from edgefleet.shared import N_BUCKETS, ModelRef, ModelStats, StatusMessage, TelemetryMessage
from edgefleet.shared.errors import ConfigError

from .conftest import Cli

TOKEN = "operator-token-for-tests-0123456789"


@pytest.fixture
def served(home: Home, model_file: Path) -> Iterator[str]:
    home.settings = replace(home.settings, operator_token=TOKEN)
    for name, profile in (("pi-1", "rpi4"), ("box-1", "x86-edge")):
        enrolled = add_device(home, DeviceCreate(name=name, profile=profile))
        assert tomllib.loads(enrolled.agent_config)["artifact_token"]
    add_model(home, model_file, name="digits", version="1.0.0")
    record_deployment(home, "digits:1.0.0", devices=["pi-1"])
    counts = [0] * N_BUCKETS
    counts[20] = 10
    stats = ModelStats(
        model=ModelRef(name="digits", version="1.0.0"),
        deployment_id="dep-1",
        requests=10,
        latency_counts=counts,
        p95_ms=4.2,
    )
    with home.session(write=True) as s:
        ingest_many(
            s,
            [
                ("pi-1", StatusMessage(device_id="pi-1", online=True)),
                ("pi-1", TelemetryMessage(device_id="pi-1", interval_s=1.0, models=[stats])),
            ],
        )
    server = ArtifactServer(
        home.store, registry_token_check(home.engine), web=FleetWeb(home)
    ).start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def _bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_api_wants_the_operator_token(served: str) -> None:
    assert httpx.get(f"{served}/api/v1/status").status_code == 401
    assert httpx.get(f"{served}/api/v1/status", headers=_bearer("wrong")).status_code == 401
    answer = httpx.get(f"{served}/api/v1/status", headers=_bearer())
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    body = answer.json()
    assert body["summary"] == {
        "devices": 2,
        "online": 1,
        "profiles": {"rpi4": 1, "x86-edge": 1},
        "states": {"pending": 1},
    }
    pi = next(d for d in body["devices"] if d["device"] == "pi-1")
    assert (pi["desired"], pi["serving"], pi["state"], pi["p95_ms"]) == (
        "digits:1.0.0", None, "pending", 4.2,
    )  # fmt: skip


def test_filters_and_the_other_endpoints(served: str) -> None:
    get = lambda path: httpx.get(f"{served}{path}", headers=_bearer())  # noqa: E731
    assert [d["device"] for d in get("/api/v1/status?online=false").json()["devices"]] == ["box-1"]
    assert [d["device"] for d in get("/api/v1/status?profile=rpi4").json()["devices"]] == ["pi-1"]
    assert [d["device"] for d in get("/api/v1/status?q=BOX").json()["devices"]] == ["box-1"]
    deployments = get("/api/v1/deployments").json()
    assert len(deployments) == 1
    dep = deployments[0]
    assert (dep["kind"], dep["model"], dep["state"], dep["total"], dep["finished"]) == (
        "deployment", "digits:1.0.0", "running", 1, 0,
    )  # fmt: skip
    assert [d["device"] for d in dep["waves"][0]["devices"]] == ["pi-1"]
    one = get(f"/api/v1/deployments/{dep['deployment_id']}")
    assert one.status_code == 200 and one.json()["deployment_id"] == dep["deployment_id"]
    assert get("/api/v1/deployments/nope").status_code == 400
    chart = get("/api/v1/latency?minutes=5").json()
    assert [s["model"] for s in chart["series"]] == ["digits:1.0.0"]
    assert chart["series"][0]["points"][0][1] > 0
    assert get("/api/v1/latency?minutes=abc").status_code == 400
    assert get("/api/v1/events?limit=5").status_code == 200
    assert get("/api/v1/nothing").status_code == 404


def test_the_login_form_sets_an_http_only_cookie(served: str) -> None:
    with httpx.Client(base_url=served) as browser:
        assert 'action="/login"' in browser.get("/").text  # no cookie: the login form
        wrong = browser.post("/login", data={"token": "wrong"})
        assert wrong.status_code == 401 and "Wrong token" in wrong.text
        right = browser.post("/login", data={"token": TOKEN})
        assert right.status_code == 303 and right.headers["location"] == "/"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert TOKEN not in cookie  # a digest, never the token
        assert 'id="devices"' in browser.get("/").text
        assert browser.get("/api/v1/status").status_code == 200
        browser.get("/logout")
        assert browser.get("/api/v1/status").status_code == 401
    assert httpx.get(f"{served}/ui/app.js").headers["content-type"].startswith("text/javascript")


def test_only_allowed_networks_reach_it(home: Home) -> None:
    home.settings = replace(home.settings, operator_token=TOKEN, web_allow="10.0.0.0/8")
    web = FleetWeb(home)
    assert web.answer("GET", "/", "", {}, "127.0.0.1").status == 404
    assert web.answer("GET", "/", "", {}, "10.1.2.3").status == 200
    assert web.answer("GET", "/", "", {}, "::ffff:10.1.2.3").status == 200
    home.settings = replace(home.settings, web_allow="not-a-network")
    with pytest.raises(ConfigError):
        FleetWeb(home)


def test_without_a_token_the_page_is_off(home: Home) -> None:
    home.settings = replace(home.settings, operator_token="")
    answer = FleetWeb(home).answer("GET", "/api/v1/status", "", _bearer(""), "127.0.0.1")
    assert answer.status == 403 and b"operator_token" in answer.body


def test_init_makes_an_operator_token_and_says_where(cli: Cli, home_dir: Path) -> None:
    out = cli.ok("init").stdout
    assert "fleet page http://127.0.0.1:8471/" in out and "operator_token" in out
    config = home_dir / "config.toml"
    token = tomllib.loads(config.read_text())["operator_token"]
    assert len(token) >= 40 and token not in out  # printed nowhere, kept in the 0600 file
    assert config.stat().st_mode & 0o777 == 0o600
    assert tomllib.loads(config.read_text())["web_allow"] == "127.0.0.0/8, ::1"
