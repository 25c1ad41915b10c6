"""The registry and the fleet agree again on their own after a fault (issue 15), with the real
Mosquitto, `edgefleet serve` and four agent subprocesses whose links run through proxies:

- the broker SIGKILLed and started again at four moments of a deployment, with a stock
  install's autosave (it forgets everything since it started: a queued order, sessions,
  retained statuses, events) and with the generated setting (one second);
- `serve` stopped (SIGTERM, SIGKILL) for longer than the agent's old retry window while
  every device downloads from it;
- a partition (connections cut, or kept and silent) while devices download;
- every packet delayed 300 ms each way for a whole deployment.

Every test ends with the same check (``FaultFleet.wait_converged`` and ``operator_view``):
each device serves the new version or failed with a reason; the registry's rows and
`edgefleet status --json` say what each device's own state file and inference endpoint
say; no device accepted the deployment or swapped to it twice (its own log).
"""

from __future__ import annotations

import signal

import pytest

from edgefleet.harness import (
    CRASH_MOMENTS,
    STOCK_AUTOSAVE_S,
    FaultFleet,
    FaultRun,
    broker_crash,
    partition,
    serve_down,
    slow_links,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CONVERGE_S = 90.0  # reconciliation's ping and resend take about 20 s of it at most


def converged(fleet: FaultFleet, run: FaultRun) -> None:
    """Agreement within a bounded wait, then the operator's view says the same."""
    try:
        fleet.wait_converged(run.deployment_id, CONVERGE_S)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{fleet.logs(1500)}")
    # `status` is a separate process reading the registry: what it says may lag by a poll
    for _ in range(3):
        if not (problems := fleet.operator_view(run.deployment_id)):
            return
    pytest.fail("`edgefleet status` disagrees with the devices:\n" + "\n".join(problems))


@pytest.mark.parametrize("moment", CRASH_MOMENTS)
@pytest.mark.parametrize("autosave", [STOCK_AUTOSAVE_S, 1], ids=["stock-autosave", "autosave-1s"])
def test_a_broker_killed_mid_deployment(
    fault_fleet: FaultFleet, moment: str, autosave: int
) -> None:
    fault_fleet.ready(autosave_interval=autosave)
    run = broker_crash(fault_fleet, fault_fleet.add_version(), moment)
    converged(fault_fleet, run)


def test_an_order_the_crashed_broker_forgot_is_sent_again(fault_fleet: FaultFleet) -> None:
    """The issue's failing case, looked at closely: acknowledged, queued, forgotten; the
    devices' status after a ping shows it, and each row is sent again once."""
    fault_fleet.ready(autosave_interval=STOCK_AUTOSAVE_S)
    before = fault_fleet.counters()
    run = broker_crash(fault_fleet, fault_fleet.add_version(), "queued")
    converged(fault_fleet, run)
    rows = fault_fleet.registry(run.deployment_id)
    assert {name: row.resends for name, row in rows.items()} == dict.fromkeys(rows, 1)
    after = fault_fleet.counters()
    assert after["resends"] - before["resends"] == len(rows)
    assert after["pings"] - before["pings"] >= len(rows)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_serve_down_longer_than_the_old_retry_window(fault_fleet: FaultFleet, sig: int) -> None:
    fault_fleet.ready()
    run = serve_down(fault_fleet, fault_fleet.add_version(), sig)
    converged(fault_fleet, run)


@pytest.mark.parametrize("how", ["cut", "blackhole"])
def test_a_partition_while_devices_download(fault_fleet: FaultFleet, how: str) -> None:
    fault_fleet.ready()
    run = partition(fault_fleet, fault_fleet.add_version(), how)
    converged(fault_fleet, run)


def test_slow_links_for_a_whole_deployment(fault_fleet: FaultFleet) -> None:
    fault_fleet.ready()
    run = slow_links(fault_fleet, fault_fleet.add_version(), delay_s=0.3)
    converged(fault_fleet, run)
