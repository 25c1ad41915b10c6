"""The fleet page in headless Chromium (Debian's, driven by Playwright) against a running
`edgefleet serve` with real agents: it logs in with the operator token, loads with no
console errors, lists the fleet's devices, draws the latency chart, updates by itself after
a deploy, and filters. Screenshots go to $EDGEFLEET_SCREENSHOTS (else the test's folder)."""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.harness import mosquitto_binary, write_digits_model

from .running_fleet import RunningFleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
WAIT_MS = 90_000  # the longest any evidence is waited for


def _skip_without_tools() -> None:
    try:
        mosquitto_binary()
    except RuntimeError as exc:  # pragma: no cover - `make setup` installs it
        pytest.skip(str(exc))
    if not os.path.exists(CHROMIUM):  # pragma: no cover - `make setup` installs it
        pytest.skip("chromium is not installed (make setup installs it)")
    pytest.importorskip("playwright", reason="playwright is in requirements-dev.txt")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    _skip_without_tools()
    running = RunningFleet(tmp_path_factory.mktemp("web"))
    try:
        yield running.start()
    finally:
        running.close()


@pytest.fixture
def browser_page(fleet: RunningFleet) -> Iterator[tuple[Any, list[str]]]:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []

    def console(message: Any) -> None:
        if message.type == "error":
            problems.append(message.text)

    def crashed(exc: Any) -> None:
        problems.append(str(exc))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.set_default_timeout(WAIT_MS)
        page.on("console", console)
        page.on("pageerror", crashed)
        try:
            yield page, problems
        finally:
            browser.close()


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("EDGEFLEET_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cell(page: Any, device: str, column: int) -> str:
    return str(page.locator(f'#devices tr[data-device="{device}"] td').nth(column).inner_text())


def test_the_page_shows_the_fleet_and_follows_a_deploy(
    fleet: RunningFleet, browser_page: tuple[Any, list[str]], tmp_path: Path
) -> None:
    page, problems = browser_page
    shots = _shots(tmp_path)
    token = tomllib.loads((fleet.home / "config.toml").read_text())["operator_token"]
    base = f"http://127.0.0.1:{fleet.http_port}"

    page.goto(f"{base}/")
    page.fill("#token", "not the token")
    page.click("button[type=submit]")
    page.wait_for_selector("text=Wrong token")
    assert problems == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]  # the refused login itself; nothing else
    problems.clear()
    page.fill("#token", token)
    page.click("button[type=submit]")

    # the fleet: both agents and the board without one, with what each serves
    for device in ("pi-1", "box-1", "sensor-1"):
        page.wait_for_selector(f'#devices tr[data-device="{device}"]')
    page.wait_for_function(
        "() => document.querySelector('#devices tr[data-device=\"pi-1\"] td:nth-child(5)')"
        ".textContent === 'digits:1.0.0'"
    )
    assert _cell(page, "pi-1", 1) == "online"
    assert _cell(page, "sensor-1", 2) == "rpi5"
    # the chart: a line for digits:1.0.0 from the devices' merged histograms
    page.wait_for_selector('#chart polyline[data-model="digits:1.0.0"]', state="attached")
    assert page.get_attribute('#chart polyline[data-model="digits:1.0.0"]', "points")
    page.wait_for_selector("#deployments .deployment >> text=completed")
    page.screenshot(path=str(shots / "fleet-page.png"), full_page=True)

    # a deploy the page was not told about: it shows up by itself
    model = write_digits_model(fleet.tmp / "digits-v2.onnx", seed=1)
    fleet.ok("model", "add", str(model), "--name", "digits", "--version", "2.0.0")
    fleet.ok("deploy", "digits:2.0.0", "--device", "pi-1")
    page.wait_for_function(
        "() => document.querySelector('#devices tr[data-device=\"pi-1\"] td:nth-child(5)')"
        ".textContent === 'digits:2.0.0'"
    )
    assert _cell(page, "pi-1", 3) == "digits:2.0.0"  # desired
    assert _cell(page, "box-1", 4) == "digits:1.0.0"
    page.wait_for_selector("#deployments .deployment >> text=digits:2.0.0")
    page.wait_for_selector('#chart polyline[data-model="digits:2.0.0"]', state="attached")
    page.wait_for_selector("#events >> text=committed")
    page.screenshot(path=str(shots / "fleet-page-after-deploy.png"), full_page=True)

    # filters
    page.fill("#q", "box")
    page.wait_for_function("() => document.querySelectorAll('#devices tbody tr').length === 1")
    assert _cell(page, "box-1", 0) == "box-1"
    page.select_option("#online", "false")
    page.fill("#q", "")
    page.wait_for_function("() => document.querySelectorAll('#devices tbody tr').length === 0")
    page.select_option("#online", "")
    page.wait_for_function("() => document.querySelectorAll('#devices tbody tr').length === 3")

    assert problems == []


def test_the_page_refuses_strangers(
    fleet: RunningFleet, browser_page: tuple[Any, list[str]]
) -> None:
    page, problems = browser_page
    base = f"http://127.0.0.1:{fleet.http_port}"
    answer = page.goto(f"{base}/api/v1/status")
    assert answer is not None and answer.status == 401
    page.goto(f"{base}/")
    assert page.locator("#token").count() == 1  # the login form, no fleet
    assert page.locator("#devices").count() == 0
    assert [p for p in problems if "401" not in p] == []
