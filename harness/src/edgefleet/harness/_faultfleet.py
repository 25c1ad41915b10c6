"""Faults against the real controller and its fleet, for tests/faults and bench/faults.py: a
``ControllerFleet`` whose agents reach the broker and the artifact server each through
their own ``TcpProxy``; the faults a fleet meets (the broker SIGKILLed at a chosen moment of
a deployment, `serve` down, a partition, slow links) as one table of scenarios; and the
one convergence check both use: every device serves the target or has failed with a
reason, the registry says the same as every device's own state, and nothing ran twice.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ._broker import STOCK_AUTOSAVE_S, free_port, wait_port
from ._controller import ControllerFleet
from ._models import write_digits_model
from ._proxy import TcpProxy
from ._waiting import wait_until

# Agent settings for a fleet under faults: quick retries so a test waits on seconds, not
# minutes. The download timeout also bounds how long a blackholed download hangs.
FAULT_AGENT_ENV = {
    "EDGEFLEET_AGENT_DOWNLOAD_RETRY_S": "0.5",
    "EDGEFLEET_AGENT_DOWNLOAD_RETRY_MAX_S": "2",
    "EDGEFLEET_AGENT_DOWNLOAD_TIMEOUT_S": "5",
}
# The agent's old retry window (before it retried until the manifest expired): five quick
# attempts, about ten seconds. `serve` stays down longer, and until every device failed
# more attempts than that.
OLD_RETRY_WINDOW_S = 10.0
OLD_RETRY_ATTEMPTS = 5
CRASH_MOMENTS = ("queued", "deployed", "downloading", "some_committed")
COMMITTED = "committed"
FAILED_STATES = ("failed", "rolled_back")


@dataclass(frozen=True)
class DeviceLinks:
    """One device's two connections to the controller's side, each through its own proxy."""

    broker: TcpProxy
    artifacts: TcpProxy

    def all(self) -> tuple[TcpProxy, TcpProxy]:
        return self.broker, self.artifacts


@dataclass(frozen=True)
class DeviceReport:
    """What one device says about itself: its state file, its inference endpoint and its
    log (how often it accepted the deployment and swapped to it)."""

    serving: str | None  # the deployment id its inference endpoint answers with
    active: str | None  # the state file's active deployment
    current: str | None  # the deployment it last accepted
    state: str | None  # where it got with that one
    error_code: str | None
    accepted: int  # "accepted deploy <id>" lines for the target
    switched: int  # "event switching deployment=<id>" lines for the target
    download_attempts: int  # failed downloads of the current deployment so far


@dataclass(frozen=True)
class RegistryRow:
    """The registry's row of the target deployment for one device, and what the device's
    last status said it serves."""

    state: str
    error_code: str | None
    serving: str | None
    resends: int
    last_status: str  # the device's last status as ingested, for a disagreement's message


@dataclass(frozen=True)
class FaultRun:
    """A scenario played once: the deployment it started and when its fault ended
    (``time.monotonic()``; for slow links, which last the whole deployment, its start)."""

    deployment_id: str
    fault_ended: float


class FaultFleet(ControllerFleet):
    """The real controller with ``devices`` agent subprocesses (``dev-01``...), every agent's
    broker and artifact connections through proxies of its own, and ``reconcile_after_s``
    low so reconciliation acts within seconds."""

    def __init__(
        self,
        devices: int,
        workdir: Path | None = None,
        *,
        profile: str = "rpi4",
        reconcile_after_s: float = 3.0,
        telemetry_interval_s: float = 1.0,
    ) -> None:
        super().__init__(workdir)
        self.names = [f"dev-{i:02d}" for i in range(1, devices + 1)]
        self.profile = profile
        self.reconcile_after_s = reconcile_after_s
        self.telemetry_interval_s = telemetry_interval_s
        self.links: dict[str, DeviceLinks] = {}
        self.versions = 0

    # -- setting up ----------------------------------------------------------------------

    def start(self) -> FaultFleet:
        """Init, enrol every device in one command, start the proxies, `serve` and agents."""
        self.init()
        config = self.home / "config.toml"
        config.write_text(
            re.sub(
                r"(?m)^reconcile_after_s = .*$",
                f"reconcile_after_s = {self.reconcile_after_s}",
                config.read_text(),
            )
        )
        csv = self.tmp / "devices.csv"
        csv.write_text(
            "name,profile,state_dir\n"
            + "".join(f"{n},{self.profile},{self.tmp / n / 'state'}\n" for n in self.names)
        )
        self.ok("device", "add", "--from", str(csv), "--out-dir", str(self.tmp / "configs"))
        for name in self.names:
            config_file = self.tmp / "configs" / f"{name}.toml"
            self.agents[name] = {"config": config_file, "port": free_port(), "proc": None}
            self.links[name] = DeviceLinks(
                broker=TcpProxy(self.broker.port).start(),
                artifacts=TcpProxy(self.http_port).start(),
            )
        self.start_daemon()
        for name in self.names:
            self.start_agent_linked(name, wait=False)
        for name in self.names:
            wait_port(self.agents[name]["port"], timeout=120)
        self.wait_connected()
        return self

    def start_agent_linked(self, name: str, wait: bool = True) -> None:
        links = self.links[name]
        self.start_agent(
            name,
            telemetry_interval_s=self.telemetry_interval_s,
            wait=wait,
            EDGEFLEET_AGENT_BROKER_URL=links.broker.url("mqtt"),
            EDGEFLEET_AGENT_ARTIFACT_BASE_URL=links.artifacts.url("http", "/artifacts/"),
            **FAULT_AGENT_ENV,
        )

    def add_version(self) -> str:
        """A new digits model (another seed: other weights, so a real swap) added to the
        catalogue; its reference, ``digits:N.0.0``."""
        self.versions += 1
        n = self.versions
        model = write_digits_model(self.tmp / f"digits-{n}.onnx", seed=n)
        self.ok("model", "add", str(model), "--name", "digits", "--version", f"{n}.0.0")
        return f"digits:{n}.0.0"

    def deploy(self, ref: str) -> str:
        """`edgefleet deploy` of ``ref`` to every device; the deployment id."""
        rows = json.loads(self.ok("deploy", ref, "--profile", self.profile, "--json"))
        return str(rows[0]["deployment_id"])

    def ready(self, autosave_interval: int = 1, timeout: float = 60) -> None:
        """Back to a healthy fleet before a scenario: links healed, the broker running with
        ``autosave_interval`` (restarted cleanly when it changes, so a stock autosave
        forgets everything from now on), `serve` and every agent running and connected."""
        for links in self.links.values():
            for proxy in links.all():
                proxy.heal()
        broker = self.broker
        if broker.proc is None or broker.autosave_interval != autosave_interval:
            broker.autosave_interval = autosave_interval
            broker.restart()
        if self.daemon is None or self.daemon.proc.poll() is not None:
            self.start_daemon()
        for name in self.names:
            proc = self.agents[name]["proc"]
            if proc is None or proc.proc.poll() is not None:
                self.start_agent_linked(name)
        self.wait_connected(timeout)

    def wait_connected(self, timeout: float = 60) -> None:
        """Every agent holds a connection through its broker proxy and the registry has
        it online."""
        wait_until(
            lambda: (
                all(self.links[n].broker.connections >= 1 for n in self.names)
                and all(online for online in self._query_online().values())
            ),
            timeout,
            "agents not connected",
        )

    # -- faults --------------------------------------------------------------------------

    def hold_downloads(self, names: Iterable[str] | None = None) -> None:
        for name in self.names if names is None else names:
            self.links[name].artifacts.cut()

    def release_downloads(self) -> None:
        for links in self.links.values():
            links.artifacts.heal()

    def proxies(self) -> list[TcpProxy]:
        return [p for links in self.links.values() for p in links.all()]

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        assert self.daemon is not None
        if sig == signal.SIGKILL:
            self.daemon.proc.kill()
        self.daemon.stop()

    # -- evidence ------------------------------------------------------------------------

    def report(self, name: str, deployment_id: str) -> DeviceReport:
        """``name``'s own account of ``deployment_id``."""
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):  # mid-write: asked again next poll
            state = json.loads((self.tmp / name / "state" / "state.json").read_text())
        active = (state.get("active") or {}).get("deployment_id")
        current = state.get("current") or {}
        serving = None
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{self.url(name)}/v1/model", timeout=5)
            if r.status_code == 200:
                serving = r.json().get("deployment_id")
        log = (self.tmp / name / "agent.log").read_text(errors="replace")
        dep = re.escape(deployment_id)
        return DeviceReport(
            serving=serving,
            active=active,
            current=current.get("deployment_id"),
            state=current.get("state"),
            error_code=current.get("error_code"),
            accepted=len(re.findall(rf"accepted deploy {dep} ", log)),
            switched=len(re.findall(rf"event switching deployment={dep}$", log, re.M)),
            download_attempts=int((current.get("details") or {}).get("download_attempts", 0)),
        )

    def _query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        # the registry read directly: a CLI start-up costs over a second of CPU on a small
        # host, which polling would take from the very agents and daemon being timed
        with contextlib.closing(sqlite3.connect(self.home / "registry.db", timeout=10)) as db:
            return db.execute(sql, args).fetchall()

    def _query_online(self) -> dict[str, bool]:
        return {n: bool(o) for n, o in self._query("SELECT name, online FROM device")}

    def registry(self, deployment_id: str) -> dict[str, RegistryRow]:
        rows = self._query(
            "SELECT v.name, d.state, d.error_code, v.serving_deployment_id, d.resends, "
            "v.online, v.status_deployment_id, v.status_state, v.status_at "
            "FROM deployment d JOIN device v ON v.id = d.device_id "
            "WHERE d.deployment_id = ? AND d.kind = 'deploy'",
            deployment_id,
        )
        return {
            r[0]: RegistryRow(r[1], r[2], r[3], r[4], f"online={r[5]} {r[6]} {r[7]} at {r[8]}")
            for r in rows
        }

    def disagreements(self, deployment_id: str) -> list[str]:
        """Why the fleet has not converged on ``deployment_id``; empty once it has."""
        registry = self.registry(deployment_id)
        out = []
        for name in self.names:
            own = self.report(name, deployment_id)
            out += _disagreement(name, deployment_id, own, registry.get(name))
        return out

    def operator_view(self, deployment_id: str) -> list[str]:
        """Where `edgefleet status --json` disagrees with every device's own report."""
        status = self.status()
        out = []
        for name in self.names:
            s, own = status.get(name), self.report(name, deployment_id)
            if s is None:
                out.append(f"{name}: not in `status`")
                continue
            if s["deployment_id"] != deployment_id:
                out.append(f"{name}: `status` desires {s['deployment_id']}")
            if (own.current, own.state) == (deployment_id, COMMITTED):
                if (s["state"], s["serving_deployment_id"]) != (COMMITTED, deployment_id):
                    out.append(f"{name}: `status` says {s['state']}, serving {s['serving']}")
                if s["attention"] is not None:
                    out.append(f"{name}: `status` wants attention: {s['attention']}")
            elif s["state"] != "failed" or not s["attention"]:
                out.append(f"{name}: `status` says {s['state']} ({s['attention']}), not failed")
        return out

    def wait_converged(self, deployment_id: str, timeout: float = 90) -> float:
        """Poll until the registry and every device agree on ``deployment_id`` (each device
        serves it or failed with a reason, nothing ran twice); when it first held
        (``time.monotonic()``). TimeoutError with what still disagrees."""
        last: list[str] = []

        def agreed() -> float | None:
            nonlocal last
            last = self.disagreements(deployment_id)
            return None if last else time.monotonic()

        try:
            return wait_until(agreed, timeout, "no agreement", every=0.25)
        except TimeoutError:
            raise TimeoutError(
                f"{deployment_id} not converged after {timeout}s:\n  " + "\n  ".join(last)
            ) from None

    def counters(self) -> dict[str, float]:
        """The daemon's reconciliation counters (since it last started)."""
        text = httpx.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10).text
        out = {"pings": 0.0, "resends": 0.0}
        for key, metric in (
            ("pings", "edgefleet_reconcile_pings_total"),
            ("resends", "edgefleet_reconcile_resends_total"),
        ):
            found = re.search(rf"(?m)^{metric} (\S+)$", text)
            if found:
                out[key] = float(found.group(1))
        return out

    def close(self) -> None:
        super().close()
        for proxy in self.proxies():
            proxy.close()


def _disagreement(name: str, dep: str, own: DeviceReport, row: RegistryRow | None) -> list[str]:
    if row is None:
        return [f"{name}: no row in the registry"]
    twice = []
    if own.accepted > 1 or own.switched > 1:
        twice = [f"{name}: accepted {own.accepted}x, swapped {own.switched}x"]
    if own.current != dep:
        return [*twice, f"{name}: last accepted {own.current}; the registry says {row.state}"]
    if own.state == COMMITTED:
        if own.active != dep or own.serving != dep:
            return [*twice, f"{name}: committed, but serves {own.serving} (state: {own.active})"]
        if own.accepted != 1 or own.switched != 1:
            return [f"{name}: accepted {own.accepted}x, swapped {own.switched}x"]
        if (row.state, row.serving) != (COMMITTED, dep):
            return [
                *twice,
                f"{name}: serves it; the registry says {row.state}/{row.serving}"
                f" (its last status: {row.last_status})",
            ]
        return twice
    if own.state in FAILED_STATES and own.error_code:
        if row.state != "failed" or row.error_code != own.error_code:
            return [*twice, f"{name}: {own.state} ({own.error_code}); registry {row.state}"]
        return twice
    return [*twice, f"{name}: at {own.state}; the registry says {row.state}"]


# -- the scenarios -----------------------------------------------------------------------


def _wait_devices(
    fleet: FaultFleet,
    names: Iterable[str],
    deployment_id: str,
    check: Callable[[DeviceReport], bool],
    what: str,
    timeout: float = 60,
) -> None:
    names = list(names)
    wait_until(
        lambda: all(check(fleet.report(n, deployment_id)) for n in names),
        timeout,
        f"{what} ({deployment_id})",
    )


def _downloading(dep: str) -> Callable[[DeviceReport], bool]:
    return lambda r: r.current == dep and r.state == "downloading" and r.download_attempts >= 1


def broker_crash(fleet: FaultFleet, ref: str, moment: str) -> FaultRun:
    """The broker SIGKILLed and started again on its port at ``moment`` of a deployment:

    - ``queued``: every agent's broker link cut, the order acknowledged by the broker and
      queued for the device, then the crash (a stock autosave loses the queue);
    - ``deployed``: right after `deploy` returns;
    - ``downloading``: every device accepted it and waits for its download;
    - ``some_committed``: half the devices committed, the others wait for their download.
    """
    if moment not in CRASH_MOMENTS:
        raise ValueError(f"unknown moment {moment!r}; choose from {', '.join(CRASH_MOMENTS)}")
    half = fleet.names[: len(fleet.names) // 2]
    if moment == "queued":
        for name in fleet.names:
            fleet.links[name].broker.cut()
    elif moment == "downloading":
        fleet.hold_downloads()
    elif moment == "some_committed":
        fleet.hold_downloads(fleet.names[len(half) :])
    dep = fleet.deploy(ref)
    if moment == "queued":
        wait_until(
            lambda: (
                fleet._query(
                    "SELECT count(*) FROM deployment WHERE deployment_id = ? AND state = 'sent' "
                    "AND payload IS NULL",
                    dep,
                )[0][0]
                == len(fleet.names)
            ),
            60,
            "orders not acknowledged by the broker",
        )
    elif moment == "downloading":
        _wait_devices(fleet, fleet.names, dep, _downloading(dep), "not all downloading")
    elif moment == "some_committed":
        _wait_devices(fleet, half, dep, lambda r: r.state == COMMITTED, "half not committed")
    fleet.broker.restart(kill=True, down_for=1.0)
    for proxy in fleet.proxies():
        proxy.heal()
    return FaultRun(dep, time.monotonic())


def serve_down(fleet: FaultFleet, ref: str, sig: int = signal.SIGTERM) -> FaultRun:
    """`serve` stopped with ``sig`` while every device downloads from it, and kept away
    longer than the agent's old retry window: over ``OLD_RETRY_WINDOW_S`` and until each
    device failed more than ``OLD_RETRY_ATTEMPTS`` further attempts; then started again."""
    fleet.hold_downloads()
    dep = fleet.deploy(ref)
    _wait_devices(fleet, fleet.names, dep, _downloading(dep), "not all downloading")
    fleet.stop_daemon(sig)
    stopped = time.monotonic()
    before = {n: fleet.report(n, dep).download_attempts for n in fleet.names}
    fleet.release_downloads()  # the links are fine now; the server behind them is not
    wait_until(
        lambda: (
            time.monotonic() - stopped > OLD_RETRY_WINDOW_S
            and all(
                fleet.report(n, dep).download_attempts > before[n] + OLD_RETRY_ATTEMPTS
                for n in fleet.names
            )
        ),
        120,
        "devices did not keep trying",
    )
    fleet.start_daemon()
    return FaultRun(dep, time.monotonic())


def partition(fleet: FaultFleet, ref: str, how: str, seconds: float = 5.0) -> FaultRun:
    """Every device cut off (``how``: ``cut`` closes connections, ``blackhole`` keeps them
    and holds all traffic) for ``seconds`` while it downloads, then healed."""
    fleet.hold_downloads()
    dep = fleet.deploy(ref)
    _wait_devices(fleet, fleet.names, dep, _downloading(dep), "not all downloading")
    for proxy in fleet.proxies():
        if how == "cut":
            proxy.cut()
        elif how == "blackhole":
            proxy.blackhole()
        else:
            raise ValueError(f"unknown partition {how!r}: cut or blackhole")
    time.sleep(seconds)  # the fault's length, not a wait for anything
    for proxy in fleet.proxies():
        proxy.heal()
    return FaultRun(dep, time.monotonic())


def slow_links(fleet: FaultFleet, ref: str, delay_s: float = 0.3) -> FaultRun:
    """Every packet held ``delay_s`` each way, broker and artifacts, for the whole
    deployment (``ready`` heals it); the run is timed from `deploy`."""
    for proxy in fleet.proxies():
        proxy.delay(delay_s)
    started = time.monotonic()
    return FaultRun(fleet.deploy(ref), started)


Scenario = Callable[[FaultFleet, str], FaultRun]


def fault_scenarios() -> dict[str, tuple[int, Scenario]]:
    """Every scenario by name: (the broker's autosave interval for it, what it does)."""
    table: dict[str, tuple[int, Scenario]] = {}
    for autosave, label in ((STOCK_AUTOSAVE_S, "stock"), (1, "autosave1")):
        for moment in CRASH_MOMENTS:
            table[f"broker-kill/{moment}/{label}"] = (
                autosave,
                lambda f, ref, m=moment: broker_crash(f, ref, m),  # type: ignore[misc]
            )
    table["serve-down/sigterm"] = (1, lambda f, ref: serve_down(f, ref, signal.SIGTERM))
    table["serve-down/sigkill"] = (1, lambda f, ref: serve_down(f, ref, signal.SIGKILL))
    table["partition/cut"] = (1, lambda f, ref: partition(f, ref, "cut"))
    table["partition/blackhole"] = (1, lambda f, ref: partition(f, ref, "blackhole"))
    table["slow-links/300ms"] = (1, lambda f, ref: slow_links(f, ref, 0.3))
    return table
