"""One fleet under faults for the convergence tests: the real Mosquitto, `edgefleet serve`
and four agent subprocesses, each agent's broker and artifact links through proxies of its
own. Started once per session (enrolling and starting four agents costs more than most
scenarios); each test deploys a version of its own and begins from ``FaultFleet.ready``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.harness import FaultFleet, mosquitto_binary

DEVICES = 4


@pytest.fixture(scope="session")
def fault_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultFleet]:
    try:
        mosquitto_binary()
    except RuntimeError:  # pragma: no cover - set up by `make setup`
        pytest.skip("mosquitto is not installed")
    fleet = FaultFleet(DEVICES, Path(tmp_path_factory.mktemp("faultfleet")))
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.close()
