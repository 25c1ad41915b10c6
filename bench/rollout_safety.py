"""Rollout safety under load, end to end: the real `edgefleet serve`, Mosquitto and one agent
subprocess per device, with steady client traffic on every agent's inference endpoint the
whole time.

Run: .venv/bin/python bench/rollout_safety.py [--devices 20] [--rate 20] [--bad-runs 3]
     [--bad-waves 3,50%,100%] [--same-runs 6] [--bake min_requests=100,min=10s,max=2m]
     [--no-default-bake]

1. A bad version (write_slow_digits_model: the same answers, several times slower) rolled
   out with ``--bad-waves`` (three devices first) and the default bake and gates,
   ``--bad-runs`` times: seconds from the first wave device's commit to the abort decision
   (the first failing gate evaluation) and to the last touched device reporting it serves
   its old model again; client requests that failed meanwhile (must be 0), and whether a
   touched device still answered from the bad version afterwards.
2. The gates' false-abort rate: the same model file under a new version, ``--same-runs``
   times, with the default waves and gates and ``--bake``: aborted (and paused) out of
   all, and the latency gate's median p95 ratio at its last look at each wave.
3. A good version (the same file again) through every wave with the default bake
   (min_requests=100, min=60s, max=15m): seconds from `rollout start` to completed
   (skipped with --no-default-bake; it is also counted in 2).

One agent process per device, as bench/controller_rollout.py runs them (up to 50 there, for
a deploy without load). With client traffic on every device, 20 agents is what a 2-core
host carries: 20 x 20 requests/s from this process, the agents, `serve` and Mosquitto used
about one of the two cores. All devices share the host's cores, so one device's swap or
another program's burst slows its neighbours too: expect more false aborts here than on a
fleet of separate boards. The defaults take 15 to 20 minutes.

Timestamps are the registry's: gate evaluations are stamped by the controller, events by
the devices; all run on this host, so they share a clock. Medians where repeated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import time
from datetime import datetime
from typing import Any

from edgefleet.harness import (
    ClientTraffic,
    ControllerFleet,
    Observer,
    wait_until,
    write_digits_model,
    write_slow_digits_model,
)

LABEL = "bench=safety"
PROFILE = "rpi4"
TELEMETRY_S = 1.0
ROLLOUT_TIMEOUT_S = 1800.0  # a default-bake rollout of four waves takes about five minutes


class Bench:
    def __init__(self, fleet: ControllerFleet, devices: list[str], traffic: ClientTraffic):
        self.fleet = fleet
        self.devices = devices
        self.traffic = traffic

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """The registry read directly: polling it costs no CLI start-up (a second of CPU)."""
        with contextlib.closing(sqlite3.connect(self.fleet.home / "registry.db")) as db:
            return db.execute(sql, args).fetchall()

    def start(self, version: str, bake: str | None, waves: str | None = None) -> tuple[str, float]:
        args = ["rollout", "start", f"digits:{version}", "--label", LABEL, "--json"]
        if bake is not None:
            args += ["--bake", bake]
        if waves is not None:
            args += ["--waves", waves]
        started = time.monotonic()
        out = json.loads(self.fleet.ok(*args))
        return str(out["rollout"]["rollout_id"]), started

    def wait_settled(self, rollout_id: str) -> str:
        """Completed, aborted or paused (a paused rollout waits for an operator)."""

        def state() -> str | None:
            found = self.query("SELECT state FROM rollout WHERE rollout_id = ?", rollout_id)
            value = str(found[0][0]) if found else None
            return value if value in ("completed", "aborted", "paused") else None

        return wait_until(state, ROLLOUT_TIMEOUT_S, f"{rollout_id} never settled", every=0.5)

    def events(self, deployment_id: str) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for e in json.loads(self.fleet.ok("events", "--limit", "100000", "--json")):
            if e["deployment_id"] == deployment_id:
                out.setdefault(e["device"], []).append(e)
        return out

    def analysis(self, rollout_id: str) -> list[dict[str, Any]]:
        return list(json.loads(self.fleet.ok("rollout", "analysis", rollout_id, "--json")))

    def detail(self, rollout_id: str) -> dict[str, Any]:
        result = self.fleet.run("rollout", "status", rollout_id, "--json")
        return dict(json.loads(result.stdout))

    def answers_from(self, device: str, deployment_id: str, more: int) -> bool:
        """Whether ``device`` still answers from ``deployment_id`` in its next ``more``
        answers."""
        before = self.traffic.tallies()[device].deployments
        wanted = sum(before.values()) + more

        def answered() -> bool:
            return sum(self.traffic.tallies()[device].deployments.values()) >= wanted

        wait_until(answered, 30, f"{device} answers no more")
        return self.traffic.tallies()[device].deployments[deployment_id] > before[deployment_id]

    def failed(self) -> int:
        return sum(failed for _, failed in self.traffic.counts().values())

    def settle(self, seconds: float) -> None:
        """Let every device serve for a while after a rollout: its next baseline."""
        answered = sum(t.ok for t in self.traffic.tallies().values())
        wanted = answered + int(seconds * self.traffic.rate_per_s * len(self.devices))
        wait_until(
            lambda: sum(t.ok for t in self.traffic.tallies().values()) >= wanted,
            seconds * 4 + 30,
            "traffic stalled",
        )


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def bad_run(bench: Bench, version: str, waves: str) -> dict[str, Any]:
    failed_before = bench.failed()
    rollout_id, _ = bench.start(version, bake=None, waves=waves)
    state = bench.wait_settled(rollout_id)
    if state != "aborted":  # not caught: stop it by hand, and say so in the table
        bench.fleet.ok("rollout", "abort", rollout_id, "--reason", "bench: not caught")
        bench.wait_settled(rollout_id)
    detail = bench.detail(rollout_id)
    touched = sorted(r["device"] for r in detail["devices"] if r["kind"] == "rollback")
    # aborted means every rollback row finished, and a row finishes with its device's event
    back = bench.events(f"{rollout_id}.rollback")
    deployed = bench.events(rollout_id)
    commits = [at(e["at"]) for evs in deployed.values() for e in evs if e["state"] == "committed"]
    fails = [e for e in bench.analysis(rollout_id) if e["decision"] == "fail"]
    first_commit = min(commits)
    decision = at(fails[0]["at"]) if fails else float("nan")
    rolled = [at(e["at"]) for d in touched for e in back.get(d, []) if e["state"] == "rolled_back"]
    # then each touched device answers its clients from its old model only
    still = [d for d in touched if bench.answers_from(d, rollout_id, more=20)]
    return {
        "rollout": rollout_id,
        "state": state,
        "wave": detail["rollout"]["current_wave"] + 1,
        "touched": len(touched),
        "gates": sorted({e["gate"] for e in fails}),
        "to_decision_s": decision - first_commit,
        "to_all_back_s": (max(rolled) - first_commit) if len(rolled) == len(touched) else None,
        "still_serving_it": still,
        "failed_requests": bench.failed() - failed_before,
    }


def same_run(bench: Bench, version: str, bake: str | None) -> dict[str, Any]:
    failed_before = bench.failed()
    rollout_id, started = bench.start(version, bake)
    state = bench.wait_settled(rollout_id)
    took = time.monotonic() - started
    why = ""
    if state != "completed":
        detail = bench.detail(rollout_id)
        why = detail["rollout"]["reason"]
        if state == "paused":  # inconclusive: not an abort, but not a pass either
            bench.fleet.ok("rollout", "abort", rollout_id, "--reason", "bench: paused")
            bench.wait_settled(rollout_id)
        wait_until(
            lambda: (
                bench.query(
                    "SELECT count(*) FROM deployment d WHERE d.deployment_id = ? AND d.state IN "
                    "('pending', 'sent', 'in_progress')",
                    f"{rollout_id}.rollback",
                )[0][0]
                == 0
            ),
            120,
            "rollbacks never finished",
        )
    # the latency gate's median p95 ratio at its last look at each wave: same model, so
    # anything but noise around 1 is a bias of the evidence windows
    ratios: dict[int, float] = {}
    for e in bench.analysis(rollout_id):
        if e["gate"] == "latency" and e["statistic"] is not None:
            ratios[e["wave"]] = e["statistic"]
    return {
        "rollout": rollout_id,
        "state": state,
        "seconds": took,
        "ratios": [ratios[w] for w in sorted(ratios)],
        "why": why,
        "failed_requests": bench.failed() - failed_before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20.0, help="client requests/s per device")
    parser.add_argument("--bad-runs", type=int, default=3)
    parser.add_argument("--bad-waves", default="3,50%,100%")
    parser.add_argument("--same-runs", type=int, default=6)
    parser.add_argument("--bake", default="min_requests=100,min=10s,max=2m")
    parser.add_argument("--no-default-bake", action="store_true")
    args = parser.parse_args()

    devices = [f"dev-{i:02d}" for i in range(args.devices)]
    print(
        f"{args.devices} agents (one process each), {PROFILE} profile, telemetry every "
        f"{TELEMETRY_S:g} s; {args.rate:g} client requests/s per device; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
        flush=True,
    )
    fleet = ControllerFleet()
    observer = None
    try:
        fleet.init()
        good = write_digits_model(fleet.tmp / "digits.onnx", seed=0)
        slow = write_slow_digits_model(fleet.tmp / "digits-slow.onnx", seed=0)
        fleet.ok("model", "add", str(good), "--name", "digits", "--version", "1.0.0")
        fleet.ok("model", "add", str(slow), "--name", "digits", "--version", "9.0.0-slow")
        same = [f"1.0.{i}" for i in range(1, args.same_runs + 1 + (not args.no_default_bake))]
        for version in same:  # the same file: the same model, byte for byte
            fleet.ok("model", "add", str(good), "--name", "digits", "--version", version)
        for name in devices:
            fleet.add_device(name, PROFILE, LABEL)
        fleet.start_daemon()
        observer = Observer(fleet.broker.url)
        for name in devices:
            fleet.start_agent(name, telemetry_interval_s=TELEMETRY_S, wait=False)
        wait_until(
            lambda: all((s := observer.status(d)) is not None and s.online for d in devices),
            180,
            "agents not online",
        )
        fleet.ok("deploy", "digits:1.0.0", "--label", LABEL, "--wait", "--timeout", "180")

        urls = {name: fleet.url(name) for name in devices}
        with ClientTraffic(urls, rate_per_s=args.rate, max_duration_s=7200) as traffic:
            traffic.wait_answered(int(args.rate * 10), timeout=120)
            clients_from = time.monotonic()
            bench = Bench(fleet, devices, traffic)
            bad = []
            for run in range(args.bad_runs):
                bad.append(bad_run(bench, "9.0.0-slow", args.bad_waves))
                print(f"bad run {run + 1}: {bad[-1]}", flush=True)
                bench.settle(15)
            sames = []
            for version in same[: args.same_runs]:
                sames.append(same_run(bench, version, args.bake))
                print(f"same-model run {version}: {sames[-1]}", flush=True)
                bench.settle(10)
            default = None
            if not args.no_default_bake:
                default = same_run(bench, same[-1], bake=None)
                print(f"default-bake run: {default}", flush=True)
            unreachable = sum(traffic.unreachable().values())
            sent = sum(t.sent for t in traffic.tallies().values())
            rate = sent / (time.monotonic() - clients_from)
            all_failed = bench.failed()
            failures = traffic.failures()
        report(args, bad, sames, default, sent, rate, all_failed, unreachable, failures)
        caught = all(b["state"] == "aborted" and not b["still_serving_it"] for b in bad)
        return 0 if all_failed == 0 and caught else 1
    except BaseException:
        print(fleet.logs(800)[-8000:], file=sys.stderr)
        raise
    finally:
        if observer is not None:
            observer.close()
        fleet.close()


def _median(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f}" if values else "-"


def report(
    args: argparse.Namespace,
    bad: list[dict[str, Any]],
    sames: list[dict[str, Any]],
    default: dict[str, Any] | None,
    sent: int,
    rate: float,
    failed: int,
    unreachable: int,
    failures: list[str],
) -> None:
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print(f"\n1. bad version (slow model), --waves {args.bad_waves}, default gates and bake")
    print(f"{'run':>3}  {'state':<9} {'wave':>4} {'touched':>7}  {'gates failed':<18}"
          f"{'commit->abort s':>15} {'commit->all back s':>18} {'failed req':>10}")  # fmt: skip
    for i, b in enumerate(bad, 1):
        back = "-" if b["to_all_back_s"] is None else f"{b['to_all_back_s']:.1f}"
        print(
            f"{i:>3}  {b['state']:<9} {b['wave']:>4} {b['touched']:>7}  "
            f"{','.join(b['gates']):<18}{b['to_decision_s']:>15.1f} {back:>18} "
            f"{b['failed_requests']:>10}"
        )
    print(
        f"median: commit->abort {_median([b['to_decision_s'] for b in bad])} s, "
        f"commit->all back "
        f"{_median([b['to_all_back_s'] for b in bad if b['to_all_back_s'] is not None])} s"
    )
    runs = sames + ([default] if default else [])
    print(f"\n2. same model under a new version: --bake {args.bake}" + (
        "; the last row with the default bake" if default else ""))  # fmt: skip
    print(f"{'run':>3}  {'state':<9} {'seconds':>7} {'failed req':>10}  {'p95 ratios':<24} why")
    for i, s in enumerate(runs, 1):
        ratios = " ".join(f"{r:.2f}" for r in s["ratios"])
        print(
            f"{i:>3}  {s['state']:<9} {s['seconds']:>7.1f} {s['failed_requests']:>10}  "
            f"{ratios:<24} {s['why'][:90]}"
        )
    aborted = sum(s["state"] == "aborted" for s in runs)
    paused = sum(s["state"] == "paused" for s in runs)
    short = [s["seconds"] for s in sames if s["state"] == "completed"]
    every = [r for s in runs for r in s["ratios"]]
    print(
        f"p95 ratios (last look per wave, same model): median {_median(every, 2)}, "
        f"{sum(r > 1 for r in every)} of {len(every)} above 1"
    )
    print(
        f"false aborts {aborted}/{len(runs)}, paused (inconclusive) {paused}/{len(runs)}; "
        f"median seconds to complete with --bake {args.bake}: {_median(short)}"
    )
    if default:
        print(
            f"\n3. a good version through every wave with the default bake "
            f"(min_requests=100, min=60s, max=15m): {default['state']} in "
            f"{default['seconds']:.1f} s"
        )
    print(
        f"\nclient requests: {sent} sent ({rate:.0f}/s), {failed} failed, {unreachable} before "
        f"the device first answered" + (f"; first failures: {failures[:5]}" if failures else "")
    )


if __name__ == "__main__":
    sys.exit(main())
