"""One host, many devices (issue 16): deploy, ingest and the operator's queries at fleet
scale, against the real `edgefleet serve`, Mosquitto and registry.

Sub-commands (each prints a table; figures are medians of --runs, with the load average
of this host beside them, since other work shares its cores):

  deploy   seconds from `edgefleet deploy` (the CLI process, started on the clock) until
           every deployment row is committed in the registry and every device's status
           there names the deployment it serves; the dispatch span (first to last
           `sent_at`); each device's own record of the commands it received (a command
           received twice is counted); resends the registry made; and the daemon's
           threads, file descriptors and RSS (peak, from /proc/<serve pid>). With
           --agents N: N real `Agent`s, --processes of them (the agent's whole stack, ONNX
           Runtime included); with --sims N: N protocol-level devices (harness
           `FleetWorkers`, `_simfleet`: each its own MQTT session, verifying every
           manifest's Ed25519 signature). Every device is enrolled with
           `edgefleet device add --from devices.csv`; each run deploys a new version.
  ingest   simulated devices send telemetry at --rate messages a second, fleet-wide, for
           --seconds (QoS --qos); rows stored against messages the broker acknowledged,
           how far the registry lagged behind, and the daemon's RSS over the run.
  queries  `edgefleet status --json` and `edgefleet deploy --label ...` (as processes,
           what an operator waits for) against registries of --devices devices with 30
           past rollouts and a day of telemetry, seeded as bench/status_scale.py seeds
           them (its `build`, imported).

--postgres URL (deploy, ingest): the registry on that PostgreSQL server, in a database
made for the run and dropped after it.

Defaults finish in a few minutes. The issue's sizes:
  .venv/bin/python bench/fleet_scale.py deploy --agents 1000 --processes 4 --runs 3
  .venv/bin/python bench/fleet_scale.py deploy --sims 10000 --processes 4 --runs 3
  .venv/bin/python bench/fleet_scale.py ingest --devices 10000 --rate 10000 --seconds 60
  .venv/bin/python bench/fleet_scale.py queries --devices 1000 10000 --runs 5
Budgets: 1,000 agents ≤ 15 s, 10,000 simulated devices ≤ 60 s, ingest 10,000 messages/s
for a minute with nothing lost, `status` ≤ 0.5 s at 1,000 devices.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from edgefleet.harness import ControllerFleet, FleetWorkers, wait_until, write_digits_model

LABEL = "bench=scale"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def daemon_sample(pid: int) -> tuple[int, int, int]:
    """(threads, file descriptors, RSS bytes) of a process, from /proc."""
    threads = fds = rss = 0
    try:
        threads = len(os.listdir(f"/proc/{pid}/task"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return threads, fds, rss


@dataclass
class Peak:
    threads: int = 0
    fds: int = 0
    rss: int = 0

    def see(self, pid: int) -> tuple[int, int, int]:
        now = daemon_sample(pid)
        self.threads, self.fds, self.rss = (
            max(a, b) for a, b in zip(now, self.cell(), strict=True)
        )
        return now

    def cell(self) -> tuple[int, int, int]:
        return self.threads, self.fds, self.rss


# -- a fleet: home, broker, daemon, enrolled devices -------------------------------------


@contextmanager
def postgres_database(url: str | None) -> Iterator[str | None]:
    """A fresh database on the server of ``url`` for one fleet, dropped afterwards."""
    if url is None:
        yield None
        return
    name = f"edgefleet_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Fleet:
    """A controller home with ``size`` enrolled devices, its daemon and its registry."""

    size: int
    workdir: Path
    database_url: str | None
    versions: int = 1
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.controller = ControllerFleet(self.workdir)
        if self.database_url:
            self.controller.env["EDGEFLEET_DATABASE_URL"] = self.database_url
        self.controller.init()
        config = self.controller.home / "config.toml"
        text = config.read_text()
        for key, value in self.settings.items():
            text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        config.write_text(text)
        for v in range(1, self.versions + 1):
            model = write_digits_model(self.workdir / f"digits-{v}.onnx", seed=v)
            self.controller.ok("model", "add", str(model), "--name", "digits", "--version",
                               f"{v}.0.0")  # fmt: skip
        csv = self.workdir / "devices.csv"
        states = self.workdir / "state"
        csv.write_text(
            "name,state_dir\n"
            + "".join(f"dev-{i:05d},{states}/dev-{i:05d}\n" for i in range(self.size))
        )
        self.controller.ok("device", "add", "--from", str(csv), "--out-dir",
                           str(self.workdir / "configs"), "--profile", "rpi4", "--label", LABEL,
                           timeout=600)  # fmt: skip
        self.configs = sorted((self.workdir / "configs").glob("*.toml"))
        url = self.database_url or f"sqlite:///{self.controller.home / 'registry.db'}"
        self.db = sa.create_engine(url)
        self.controller.start_daemon()
        assert self.controller.daemon is not None
        self.pid = self.controller.daemon.proc.pid

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.db.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def wait_seen(self, timeout: float = 300) -> None:
        """Every device heard from: dispatch sends only to devices seen once."""
        seen = "SELECT count(*) FROM device WHERE last_seen IS NOT NULL"
        wait_until(lambda: self.scalar(seen) >= self.size, timeout, "devices not seen", every=0.5)

    def close(self) -> None:
        self.db.dispose()
        self.controller.close()


# -- deploy ----------------------------------------------------------------------------------


@dataclass
class DeployRun:
    committed_s: float | None
    serving_s: float | None
    committed: int  # rows committed when the run ended (all of them, or at --wait-s)
    sent: int  # rows sent
    dispatch_s: float  # first to last sent_at
    duplicates: int
    missing: int
    resends: int
    peak: Peak
    load: str


def deploy_once(fleet: Fleet, workers: FleetWorkers, version: str, wait_s: float) -> DeployRun:
    peak = Peak()
    t0 = time.monotonic()
    out = fleet.controller.ok("deploy", f"digits:{version}", "--label", LABEL, timeout=600)
    found = re.search(r"deployment (\S+):", out)
    assert found, out
    dep = found.group(1)
    committed_s = serving_s = None
    committed = 0
    while time.monotonic() - t0 < wait_s and (committed_s is None or serving_s is None):
        peak.see(fleet.pid)
        now = time.monotonic() - t0
        committed = fleet.scalar(
            "SELECT count(*) FROM deployment WHERE deployment_id = :d AND state = 'committed'",
            d=dep,
        )
        if committed_s is None and committed >= fleet.size:
            committed_s = now
        if (
            serving_s is None
            and fleet.scalar("SELECT count(*) FROM device WHERE serving_deployment_id = :d", d=dep)
            >= fleet.size
        ):
            serving_s = now
        time.sleep(0.1)
    peak.see(fleet.pid)
    first, last = (
        fleet.scalar(f"SELECT {f}(sent_at) FROM deployment WHERE deployment_id = :d", d=dep)
        for f in ("min", "max")
    )
    dispatch_s = (_when(last) - _when(first)) if first and last else float("nan")
    sent = fleet.scalar(
        "SELECT count(*) FROM deployment WHERE deployment_id = :d AND sent_at IS NOT NULL", d=dep
    )
    resends = int(fleet.scalar("SELECT coalesce(sum(resends), 0) FROM deployment WHERE "
                               "deployment_id = :d", d=dep))  # fmt: skip
    report = workers.report()
    received = [sum(1 for r in d["received"] if r[0] == dep) for d in report.values()]
    return DeployRun(
        committed_s, serving_s, committed, sent, dispatch_s,
        duplicates=sum(n - 1 for n in received if n > 1),
        missing=sum(1 for n in received if n == 0) + fleet.size - len(received),
        resends=resends, peak=peak, load=load(),
    )  # fmt: skip


def _when(value: Any) -> float:
    return (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    ).timestamp()


def deploy(kind: str, size: int, args: argparse.Namespace) -> list[DeployRun]:
    with (
        tempfile.TemporaryDirectory(prefix="edgefleet-scale-") as tmp,
        postgres_database(args.postgres) as url,
    ):
        fleet = Fleet(size, Path(tmp), url, versions=args.runs)
        workers = None
        try:
            options: dict[str, Any] = {"telemetry_interval_s": 10.0}
            if kind == "agents":
                options |= {"reconnect_min_s": 0.5, "reconnect_max_s": 5.0}
            started = time.monotonic()
            workers = FleetWorkers(kind, fleet.configs, processes=args.processes,
                                   workdir=Path(tmp) / "workers", options=options)  # fmt: skip
            workers.start(timeout=600)
            fleet.wait_seen()
            took = time.monotonic() - started
            print(f"  {size:,} {kind} online in {took:.0f} s; daemon threads/fds/RSS "
                  f"{_cell(daemon_sample(fleet.pid))}", flush=True)  # fmt: skip
            runs = []
            for v in range(1, args.runs + 1):
                run = deploy_once(fleet, workers, f"{v}.0.0", args.wait_s)
                print(f"  run {v}: {_deploy_row(kind, size, run)}", flush=True)
                runs.append(run)
            return runs
        except BaseException:
            print(fleet.controller.logs(600)[-3000:], file=sys.stderr)
            raise
        finally:
            if workers is not None:
                workers.close()
            fleet.close()


def _cell(sample: tuple[int, int, int]) -> str:
    return f"{sample[0]}/{sample[1]}/{sample[2] / 2**20:.0f} MB"


def _s(v: float | None, done: int) -> str:
    return f"({done:,} done)" if v is None else f"{v:.1f}"


def _deploy_row(kind: str, size: int, r: DeployRun) -> str:
    rate = r.sent / r.dispatch_s if r.dispatch_s and r.dispatch_s == r.dispatch_s else float("nan")
    return (f"{kind:>6} {size:>6,}  {_s(r.committed_s, r.committed):>12} "
            f"{_s(r.serving_s, r.committed):>12} "
            f"{r.dispatch_s:>9.1f} {rate:>8.0f} {r.duplicates:>5} {r.missing:>7} {r.resends:>7}  "
            f"{_cell(r.peak.cell()):>18}  {r.load}")  # fmt: skip


DEPLOY_HEAD = (f"{'kind':>6} {'size':>6}  {'committed s':>12} {'serving s':>12} {'dispatch':>9} "
               f"{'sent/s':>8} {'dupes':>5} {'missing':>7} {'resends':>7}  "
               f"{'daemon thr/fd/RSS':>18}  load 1/5/15")  # fmt: skip


def cmd_deploy(args: argparse.Namespace) -> None:
    results: list[tuple[str, int, list[DeployRun]]] = []
    for kind, size in (("agents", args.agents), ("sim", args.sims)):
        if size:
            print(f"deploy to {size:,} {kind} ({args.processes} processes), load {load()}")
            results.append((kind, size, deploy(kind, size, args)))
    print(f"\nseconds from `edgefleet deploy` (median of {args.runs}; peak daemon figures)")
    print(DEPLOY_HEAD)
    for kind, size, runs in results:
        done = [r for r in runs if r.committed_s is not None and r.serving_s is not None]
        mid = sorted(done or runs, key=lambda r: max(r.committed_s or 1e9, r.serving_s or 1e9))
        print(_deploy_row(kind, size, mid[len(mid) // 2]))
        if len(done) < len(runs):
            print(f"  {len(runs) - len(done)} run(s) unfinished after {args.wait_s:.0f} s")


# -- ingest ----------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> None:
    print(f"ingest: {args.devices:,} simulated devices, {args.rate:,.0f} telemetry messages/s "
          f"for {args.seconds:.0f} s at QoS {args.qos}, load {load()}")  # fmt: skip
    # each device's share of ingest must not be what limits a fleet-wide rate
    per_device = max(20.0, 2 * args.rate / args.devices)
    settings = {"ingest_rate_per_device": f"{per_device:.1f}"}
    with (
        tempfile.TemporaryDirectory(prefix="edgefleet-ingest-") as tmp,
        postgres_database(args.postgres) as url,
    ):
        fleet = Fleet(args.devices, Path(tmp), url, settings=settings)
        workers = None
        try:
            workers = FleetWorkers("sim", fleet.configs, processes=args.processes,
                                   workdir=Path(tmp) / "workers",
                                   options={"telemetry_interval_s": 1e9,
                                            "telemetry_qos": args.qos})  # fmt: skip
            workers.start(timeout=600)
            fleet.wait_seen()
            rows = lambda: int(fleet.scalar("SELECT count(*) FROM telemetry"))  # noqa: E731
            base = rows()
            rss = [daemon_sample(fleet.pid)[2]]
            print(f"{'t s':>5} {'sent':>9} {'stored':>9} {'behind':>8} {'daemon RSS':>10}  load")
            t0 = time.monotonic()
            workers.telemetry(args.rate, args.seconds)
            behind_max, stored = 0, 0
            while time.monotonic() - t0 < args.seconds:
                time.sleep(min(5.0, args.seconds / 6))
                sent = workers.progress().get("telemetry_sent", 0)
                stored = rows() - base
                behind_max = max(behind_max, sent - stored)
                rss.append(daemon_sample(fleet.pid)[2])
                print(f"{time.monotonic() - t0:>5.0f} {sent:>9,} {stored:>9,} {sent - stored:>8,} "
                      f"{rss[-1] / 2**20:>7.0f} MB  {load()}", flush=True)  # fmt: skip
            sent = workers.telemetry_done(timeout=60)
            sending_s = time.monotonic() - t0
            acked = _acked(workers, sent)
            last_change, last = time.monotonic(), stored
            while stored < acked and time.monotonic() - last_change < 30:
                time.sleep(0.2)
                stored = rows() - base
                if stored != last:
                    last_change, last = time.monotonic(), stored
            drained_s = time.monotonic() - t0
            rss.append(daemon_sample(fleet.pid)[2])
        finally:
            if workers is not None:
                workers.close()
            fleet.close()
    print(f"\n{'target/s':>9} {'sent':>9} {'acked':>9} {'stored':>9} {'lost':>7} "
          f"{'publish/s':>9} {'stored/s':>9} {'lag s':>6} {'max behind':>10} "
          f"{'RSS start/peak/end MB':>22}")  # fmt: skip
    print(f"{args.rate:>9,.0f} {sent:>9,} {acked:>9,} {stored:>9,} {acked - stored:>7,} "
          f"{sent / sending_s:>9,.0f} {stored / drained_s:>9,.0f} "
          f"{drained_s - sending_s:>6.1f} {behind_max:>10,} "
          f"{'/'.join(f'{x / 2**20:.0f}' for x in (rss[0], max(rss), rss[-1])):>22}")  # fmt: skip
    print(
        "lost: acknowledged by the broker, never stored (dropped past the daemon's queue at "
        "the broker, or dead-lettered); lag: seconds after the last message until stored"
    )


def _acked(workers: FleetWorkers, sent: int) -> int:
    """Telemetry the broker acknowledged (QoS 1), once the workers' counters settle."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: workers.progress().get("telemetry_acked", 0) >= sent, 10, "acks")
    return workers.progress().get("telemetry_acked", 0)


# -- queries ---------------------------------------------------------------------------------


def cmd_queries(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import status_scale  # the registry with history, seeded as that benchmark does

    seed = argparse.Namespace(interval_s=10.0, dense_hours=1.0, max_rows=args.max_rows)
    commands = {
        "status --json": ["status", "--json"],
        "deploy --label": ["deploy", "digits:1.0.0", "--label", "tier=main", "--label",
                           "tier=canary"],
    }  # fmt: skip
    results = []
    for devices in args.devices:
        with tempfile.TemporaryDirectory(prefix="edgefleet-queries-") as tmp:
            started = time.perf_counter()
            home, summary = status_scale.build(Path(tmp), devices, seed)
            print(f"{summary}; built in {time.perf_counter() - started:.0f} s", flush=True)
            status_scale.daemon_alive(home)
            home.close()
            for name, argv in commands.items():
                run = status_scale.as_process(Path(tmp) / "home", argv)
                results.append((devices, name, status_scale.median_s(run, args.runs), load()))
                print(f"  {name}: {results[-1][2]:.3f} s", flush=True)
    print(f"\n{'devices':>8}  {'command':<16}{'median s':>9}  load 1/5/15")
    for devices, name, seconds, when in results:
        print(f"{devices:>8,}  {name:<16}{seconds:>9.3f}  {when}")
    print(f"budget: status ≤ 0.5 s at 1,000 devices; medians of {args.runs} runs, each a process")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("deploy", help="deploy to real agents and simulated devices")
    p.add_argument("--agents", type=int, default=100, help="real agents (0: none)")
    p.add_argument("--sims", type=int, default=1000, help="simulated devices (0: none)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--postgres", metavar="URL", help="the registry on this PostgreSQL server")
    p.add_argument(
        "--wait-s",
        type=float,
        default=900.0,
        help="a run not finished by then is reported with the rows it committed",
    )
    p.set_defaults(run=cmd_deploy)
    p = sub.add_parser("ingest", help="telemetry from simulated devices at a set rate")
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--rate", type=float, default=5000.0, help="messages a second, fleet-wide")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--qos", type=int, choices=[0, 1], default=1)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--postgres", metavar="URL", help="the registry on this PostgreSQL server")
    p.set_defaults(run=cmd_ingest)
    p = sub.add_parser("queries", help="status and deploy against a registry with history")
    p.add_argument("--devices", type=int, nargs="+", default=[1000])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-rows", type=int, default=9_000_000, help="telemetry rows seeded")
    p.set_defaults(run=cmd_queries)
    args = parser.parse_args()
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
