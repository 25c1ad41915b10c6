"""Converging after faults (issue 15): how long the registry and a real fleet take to agree
again after each fault, and what reconciliation costs the daemon at 1,000 devices.

Run: .venv/bin/python bench/faults.py [--devices 20] [--runs 3] [--scenarios broker-kill,...]
     [--cost-devices 1000] [--repeats 5] [--no-fleet] [--no-cost]

1. The fleet: the real `edgefleet serve`, Mosquitto and ``--devices`` agent subprocesses
   (one process each), every agent's broker and artifact links through proxies of its own
   (``edgefleet.harness.FaultFleet``, the driver tests/faults uses too), reconcile_after_s
   3. Each scenario of ``fault_scenarios()`` (the broker SIGKILLed at four moments of a
   deployment with a stock and a one-second autosave, `serve` down past the agent's old
   retry window, a cut and a blackhole partition, 300 ms links), ``--runs`` times, each
   with a new version: seconds from the END of the fault (the broker or `serve` started
   again, the partition healed; for slow links, `deploy`) until every device serves the
   version or failed with a reason, the registry agrees with every device's own state and
   nothing was applied twice (``FaultFleet.wait_converged``, polled every 0.25 s); the
   daemon's reconcile pings and resends (from /metrics) and the rows sent again (the
   rows' ``resends``); whether `edgefleet status --json` then agreed; runs that did not
   converge within 180 s, with why. ``--scenarios`` takes name prefixes.
2. The cost of reconciliation in the daemon, without agents: a temporary SQLite registry
   with ``--cost-devices`` devices, one deployment sent to all (in-process, as
   tests/controller/rollout_sim.py does). CPU time per ingested status message
   (``ingest_many`` of one status per device in one transaction: the first batch moves
   every row to in_progress, the repeats change no row, and statuses naming no deployment
   show what the row lookup adds) and the time of one
   ``reconcile`` sweep over that many SENT rows, quiet (none due) and due (all pinged),
   and one that sends every row again. Medians of ``--repeats``.

The defaults take about 25 minutes on a 2-core host (part 2: under a minute).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgefleet.harness import FaultFleet, fault_scenarios, write_digits_model

CONVERGE_S = 180.0


# -- 1. the fleet ------------------------------------------------------------------------


def fleet_part(devices: int, runs: int, prefixes: list[str]) -> None:
    table = {
        name: entry
        for name, entry in fault_scenarios().items()
        if not prefixes or any(name.startswith(p) for p in prefixes)
    }
    if not table:
        sys.exit(f"no scenario starts with {', '.join(prefixes)}")
    print(f"starting {devices} agents, `serve` and Mosquitto ...", flush=True)
    fleet = FaultFleet(devices, telemetry_interval_s=2.0)
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        fleet.start()
        for name, (autosave, scenario) in table.items():
            for i in range(runs):
                result = one_run(fleet, autosave, scenario)
                results.setdefault(name, []).append(result)
                took = result["seconds"]
                shown = f"{took:.1f} s" if took is not None else "NOT CONVERGED"
                print(f"  {name} run {i + 1}: {shown}", flush=True)
    finally:
        fleet.close()
    print_fleet_table(devices, runs, results)


def one_run(fleet: FaultFleet, autosave: int, scenario: Callable[..., Any]) -> dict[str, Any]:
    fleet.ready(autosave_interval=autosave)
    daemon, before = fleet.daemon, fleet.counters()
    ref = fleet.add_version()
    run = scenario(fleet, ref)
    out: dict[str, Any] = {"seconds": None, "why": [], "status_agrees": None}
    try:
        out["seconds"] = fleet.wait_converged(run.deployment_id, CONVERGE_S) - run.fault_ended
    except TimeoutError as exc:
        out["why"] = str(exc).splitlines()[1:]
    after = fleet.counters()
    if fleet.daemon is not daemon:  # `serve` restarted: its counters began again at zero
        before = {k: 0.0 for k in before}
    out["pings"] = after["pings"] - before["pings"]
    out["resends"] = after["resends"] - before["resends"]
    out["rows_resent"] = sum(1 for r in fleet.registry(run.deployment_id).values() if r.resends)
    if out["seconds"] is not None:
        out["status_agrees"] = not fleet.operator_view(run.deployment_id)
    return out


def print_fleet_table(devices: int, runs: int, results: dict[str, list[dict[str, Any]]]) -> None:
    print(f"\nseconds from the end of each fault to full agreement ({devices} devices, "
          f"{runs} run(s) each; pings/resends: daemon counters, per run; rows: rows sent "
          "again, per run)")  # fmt: skip
    head = (
        f"{'scenario':<32} {'ok':>5} {'median s':>9} {'min s':>7} {'max s':>7} "
        f"{'pings':>7} {'resends':>8} {'rows':>6} {'status ok':>9}"
    )
    print(head)
    print("-" * len(head))
    failed = []
    for name, rs in results.items():
        secs = [r["seconds"] for r in rs if r["seconds"] is not None]
        ok = f"{len(secs)}/{len(rs)}"

        def med(key: str, rs: list[dict[str, Any]] = rs) -> str:
            return f"{statistics.median(r[key] for r in rs):.0f}"

        timing = (
            f"{statistics.median(secs):>9.1f} {min(secs):>7.1f} {max(secs):>7.1f}"
            if secs
            else f"{'-':>9} {'-':>7} {'-':>7}"
        )
        agrees = sum(1 for r in rs if r["status_agrees"])
        print(
            f"{name:<32} {ok:>5} {timing} {med('pings'):>7} {med('resends'):>8} "
            f"{med('rows_resent'):>6} {agrees:>5}/{len(rs)}"
        )
        failed += [(name, r["why"]) for r in rs if r["seconds"] is None]
    if failed:
        print("\ndid not converge:")
        for name, why in failed:
            print(f"  {name}:")
            for line in why[:10]:
                print(f"    {line}")
    else:
        print("\nevery run converged")


# -- 2. the cost of reconciliation -------------------------------------------------------


def cost_part(n: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="edgefleet-cost-") as tmp:
        os.environ["EDGEFLEET_HOME"] = str(Path(tmp) / "home")
        for var in ("EDGEFLEET_DATABASE_URL", "EDGEFLEET_BROKER_URL", "EDGEFLEET_ARTIFACT_URL"):
            os.environ.pop(var, None)
        _cost(Path(tmp), n, repeats)


def _cost(tmp: Path, n: int, repeats: int) -> None:
    # imported here: part 1 alone needs nothing of the controller in this process
    from edgefleet.controller import init_home, load_settings, open_home
    from edgefleet.controller.catalog import add_model
    from edgefleet.controller.daemon import ingest_many
    from edgefleet.controller.fleet import NewDevice, add_devices
    from edgefleet.controller.registry import DeviceCreate
    from edgefleet.controller.rollout import deploy, dispatch_pending, reconcile
    from edgefleet.shared import DeviceState, StatusMessage

    logging.getLogger("edgefleet").setLevel(logging.ERROR)  # a warning per row sent again
    settings = load_settings()
    init_home(settings)
    home = open_home(settings)
    names = [f"b{i:04d}" for i in range(n)]
    add_devices(home, [NewDevice(DeviceCreate(name=m, profile="rpi4")) for m in names], tmp / "cfg")
    add_model(home, write_digits_model(tmp / "d.onnx"), name="digits", version="1.0.0")
    now = datetime.now(UTC).replace(microsecond=0)

    def statuses(at: datetime, dep: str | None, state: DeviceState, seq: int) -> list[Any]:
        return [
            (m, StatusMessage(device_id=m, online=True, profile="rpi4", last_sequence=seq,
                              deployment_id=dep, state=state, sent_at=at))
            for m in names
        ]  # fmt: skip

    def ingest(batch: list[Any], at: datetime) -> float:
        """CPU seconds of one batch in one transaction, as the daemon's writer does it."""
        start = time.process_time()
        with home.session(write=True) as session:
            ingest_many(session, batch, now=at)
        return time.process_time() - start

    def publish(topic: str, payload: bytes) -> None:
        pass  # the broker took it

    ingest(statuses(now, None, DeviceState.IDLE, 0), now)  # every device said hello
    dep = deploy(home, "digits:1.0.0", devices=names, started_by="bench", now=now)[0]
    dep_id = dep.deployment_id
    sign_start = time.perf_counter()
    while dispatch_pending(home, publish, now=now, limit=500):
        pass
    signed_s = time.perf_counter() - sign_start

    def sweep(at: datetime) -> tuple[float, float, Any]:
        wall, cpu = time.perf_counter(), time.process_time()
        done = reconcile(home, publish, grace_s=30, now=at)
        return time.perf_counter() - wall, time.process_time() - cpu, done

    quiet = [sweep(now + timedelta(seconds=1)) for _ in range(repeats)]
    assert all(not q[2].pinged for q in quiet)
    due = []
    t = now
    for _ in range(repeats):
        t += timedelta(seconds=31)  # each sweep's pings are quiet for a grace period again
        due.append(sweep(t))
    assert all(len(d[2].pinged) == n for d in due)
    # the pings' answers: every device shows it never got the order; one sweep sends all
    t += timedelta(seconds=1)
    ingest(statuses(t, None, DeviceState.IDLE, 0), t)
    resend = sweep(t + timedelta(seconds=1))
    assert len(resend[2].resent) == n

    # ingest: the first batch moves every row (now pending again) ... send them once more
    while dispatch_pending(home, publish, now=t, limit=500):
        pass
    t += timedelta(seconds=2)
    moving = ingest(statuses(t, dep_id, DeviceState.DOWNLOADING, 2), t)
    same = []
    for _ in range(repeats):
        t += timedelta(seconds=1)
        same.append(ingest(statuses(t, dep_id, DeviceState.DOWNLOADING, 2), t))
    plain = []  # the same without a deployment named: no row to look up
    for _ in range(repeats):
        t += timedelta(seconds=1)
        plain.append(ingest(statuses(t, None, DeviceState.IDLE, 2), t))
    home.close()

    def ms(xs: list[float]) -> str:
        return f"{statistics.median(xs) * 1000:>10.1f}"

    print(f"\nreconciliation in the daemon, {n} devices, SQLite, no agents (medians of {repeats})")
    print(f"  (signing and sending the deployment to all: {signed_s:.1f} s wall, once)")
    print(f"{'what':<52} {'per batch ms':>12} {'per msg us':>11}")
    print("-" * 77)
    per = f"{moving / n * 1e6:>11.0f}"
    print(f"{'ingest: statuses that move every row (once)':<52} {moving * 1000:>12.1f} {per}")
    per = f"{statistics.median(same) / n * 1e6:>11.0f}"
    print(f"{'ingest: statuses that change no row (CPU)':<52} {ms(same):>12} {per}")
    per = f"{statistics.median(plain) / n * 1e6:>11.0f}"
    print(f"{'ingest: statuses naming no deployment (CPU)':<52} {ms(plain):>12} {per}")
    print(f"\n{'reconcile sweep over ' + str(n) + ' SENT rows':<52} {'wall ms':>10} {'CPU ms':>10}")
    print("-" * 74)
    for label, runs in (("quiet (none due)", quiet), ("due (every device pinged)", due)):
        print(f"{label:<52} {ms([r[0] for r in runs])} {ms([r[1] for r in runs])}")
    print(
        f"{'every row sent again (once)':<52} {resend[0] * 1000:>10.1f} {resend[1] * 1000:>10.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="", help="comma-separated name prefixes")
    parser.add_argument("--cost-devices", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-fleet", action="store_true")
    parser.add_argument("--no-cost", action="store_true")
    args = parser.parse_args()
    if not args.no_cost:
        cost_part(args.cost_devices, args.repeats)
    if not args.no_fleet:
        prefixes = [p for p in args.scenarios.split(",") if p]
        fleet_part(args.devices, args.runs, prefixes)


if __name__ == "__main__":
    main()
