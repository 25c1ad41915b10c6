"""Least privilege for artifacts, end to end: `edgefleet serve`, a private Mosquitto and a
real agent process. The device downloads and commits its own deployment with the token its
`device add` wrote; another enrolled device's token is refused for that artifact, and so is
the device's own MQTT password."""

from __future__ import annotations

import tomllib

import httpx
import pytest

from edgefleet.harness import ControllerFleet, mosquitto_binary, wait_until, write_digits_model
from edgefleet.shared import sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # serve and agent processes

try:
    mosquitto_binary()
except RuntimeError:  # pragma: no cover - set up by `make setup`
    pytest.skip("mosquitto is not installed", allow_module_level=True)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_device_downloads_its_own_deployment_and_no_other_device_can(
    fleet: ControllerFleet,
) -> None:
    fleet.init()
    model = write_digits_model(fleet.tmp / "digits.onnx", seed=0)
    fleet.ok("model", "add", str(model), "--name", "digits", "--version", "1.0.0")
    pi1 = tomllib.loads(fleet.add_device("pi-1", "rpi4").read_text())
    pi2 = tomllib.loads(fleet.add_device("pi-2", "rpi4").read_text())
    assert pi1["artifact_token"] != pi1["broker_password"]
    fleet.start_daemon()
    fleet.start_agent("pi-1")
    fleet.wait_online("pi-1")

    fleet.ok("deploy", "digits:1.0.0", "--device", "pi-1")
    try:
        wait_until(lambda: fleet.status()["pi-1"]["state"] == "committed", 90, "pi-1 committing")
    except TimeoutError:
        pytest.fail(f"pi-1 never committed: {fleet.status()}\n{fleet.logs()}")

    sha = sha256_file(model)
    url = f"http://127.0.0.1:{fleet.http_port}/artifacts/sha256/{sha[:2]}/{sha}"
    assert httpx.get(url, headers=_bearer(pi1["artifact_token"])).status_code == 200
    refused = httpx.get(url, headers=_bearer(pi2["artifact_token"]))
    elsewhere = f"http://127.0.0.1:{fleet.http_port}/artifacts/sha256/ab/{'ab' * 32}"
    missing = httpx.get(elsewhere, headers=_bearer(pi2["artifact_token"]))
    # not pi-2's, and not there: the same answer
    assert (refused.status_code, refused.content) == (404, b"no such artifact\n")
    assert (missing.status_code, missing.content) == (404, b"no such artifact\n")
    assert httpx.get(url, headers=_bearer(pi1["broker_password"])).status_code == 401
