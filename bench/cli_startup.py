"""What an `edgefleet` call costs a script: `--help`, `status --json` and `device list --json`
on a home with --devices devices, and enrolling 1,000 devices one `device add` at a time
against one `device add --from devices.csv`.

Every figure is a process as an operator's script starts it (the installed `edgefleet`
console script: interpreter, imports and work), the median of --runs: wall time and the CPU
time the process used (user + system). "imports" is the import time `python -X importtime`
reports for the same command (the median of --runs too); "heavy" names the big libraries it
loaded (numpy, onnx, onnxruntime, torch, uvicorn, starlette, fastapi), which none of these
commands needs.

1,000 single `device add` calls would take a quarter of an hour; --sample of them are run
and their median multiplied by --enrol (the table says so). The bulk form runs for real,
--enrol rows into a fresh folder, min(--runs, 3) times.

Before and after: --before-src names the `src` folder of another version of
edgefleet-controller (e.g. from `git archive`); each run then measures it (on PYTHONPATH)
and this checkout one after the other, so both see the same load on a shared machine. A
version without `device add --from` shows "n/a" there.

Run: .venv/bin/python bench/cli_startup.py [--devices 1000] [--runs 7] [--sample 50]
                                           [--before-src /tmp/before/src]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.controller import init_home, load_settings, open_home
from edgefleet.controller.fleet import add_device
from edgefleet.controller.registry import DeviceCreate

HEAVY = ("numpy", "onnx", "onnxruntime", "torch", "uvicorn", "starlette", "fastapi")
PROFILES = ("rpi4", "rpi5", "x86-edge")


@dataclass
class Figure:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    imports_ms: list[float] = field(default_factory=list)
    heavy: set[str] = field(default_factory=set)
    failed: str = ""
    scale: int = 1  # a sample's median stands for this many calls

    def median(self, values: list[float]) -> float | None:
        return statistics.median(values) * self.scale if values and not self.failed else None


def edgefleet() -> list[str]:
    script = Path(sys.executable).with_name("edgefleet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgefleet.controller"]


def run_once(args: list[str], env: dict[str, str], figure: Figure) -> bool:
    """Run one process; add its wall and CPU seconds to ``figure``. False if it failed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = os.times().elapsed
    done = subprocess.run([*edgefleet(), *args], env=env, capture_output=True, check=False)
    wall = os.times().elapsed - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        figure.failed = f"exit {done.returncode}"
        return False
    figure.wall.append(wall)
    figure.cpu.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return True


def add_imports(args: list[str], env: dict[str, str], figure: Figure) -> None:
    """The milliseconds of imports `-X importtime` reports, and the heavy packages loaded."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edgefleet.controller", *args],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    total_us = 0
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit() and not name.startswith("  "):  # a top-level import
            total_us += int(cumulative)
        if (top := name.strip().split(".")[0]) in HEAVY:
            figure.heavy.add(top)
    figure.imports_ms.append(total_us / 1000)


def build_home(folder: Path, devices: int) -> Path:
    """A home with ``devices`` devices, enrolled one by one through the library (which every
    version has)."""
    home_dir = folder / "home"
    init_home(load_settings(home_dir, env={}))
    home = open_home(load_settings(home_dir, env={}))
    try:
        for i in range(devices):
            new = DeviceCreate(
                name=f"dev-{i:05d}", profile=PROFILES[i % 3], labels={"site": f"s{i % 7}"}
            )
            add_device(home, new)
    finally:
        home.close()
    return home_dir


def startup(args: list[str], envs: dict[str, dict[str, str]], runs: int) -> dict[str, Figure]:
    figures = {version: Figure() for version in envs}
    for _ in range(runs):
        for version, env in envs.items():
            run_once(args, env, figures[version])
            add_imports(args, env, figures[version])
    return figures


def single_adds(
    envs: dict[str, dict[str, str]], folder: Path, sample: int, enrol: int
) -> dict[str, Figure]:
    figures = {version: Figure(scale=enrol) for version in envs}
    for i in range(sample):
        for version, env in envs.items():
            name = f"one-{version}-{i:05d}"
            args = ["device", "add", name, "--profile", "rpi4", "-l", "site=bench",
                    "--out", str(folder / f"{name}.toml")]  # fmt: skip
            run_once(args, env, figures[version])
    return figures


def bulk_adds(
    envs: dict[str, dict[str, str]], folder: Path, enrol: int, runs: int
) -> dict[str, Figure]:
    figures = {version: Figure() for version in envs}
    for r in range(runs):
        for version, env in envs.items():
            prefix = f"bulk-{version}-{r}"
            rows = [f"{prefix}-{i:05d},{PROFILES[i % 3]},site=s{i % 7};rack=r{i % 40}"
                    for i in range(enrol)]  # fmt: skip
            csv = folder / f"{prefix}.csv"
            csv.write_text("name,profile,labels\n" + "\n".join(rows) + "\n")
            args = ["device", "add", "--from", str(csv), "--out-dir", str(folder / prefix)]
            if not run_once(args, env, figures[version]) and figures[version].failed == "exit 2":
                figures[version].failed = "n/a: no `device add --from`"
    return figures


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def print_table(results: dict[str, dict[str, Figure]], versions: list[str]) -> None:
    head = ["command"]
    for v in versions:
        head += [f"{v} wall s", f"{v} CPU s", f"{v} imports ms", f"{v} heavy"]
    rows = []
    for command, figures in results.items():
        row = [command]
        for v in versions:
            f = figures[v]
            ms = statistics.median(f.imports_ms) if f.imports_ms else None
            row += [seconds(f.median(f.wall)), seconds(f.median(f.cpu)),
                    "-" if ms is None else f"{ms:.0f}",
                    " ".join(sorted(f.heavy)) or "-"]  # fmt: skip
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        cells = zip(r, widths, strict=True)
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)))
    for command, figures in results.items():
        for v in versions:
            if figures[v].failed:
                print(f"  {v}, {command}: {figures[v].failed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="devices in the home")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sample", type=int, default=50, help="single `device add` calls")
    parser.add_argument("--enrol", type=int, default=1000, help="devices to enrol")
    parser.add_argument("--before-src", type=Path, help="another version's controller/src")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgefleet-cli-") as tmp:
        folder = Path(tmp)
        home_dir = build_home(folder, args.devices)
        env = {**os.environ, "EDGEFLEET_HOME": str(home_dir), "COLUMNS": "120"}
        for var in ("EDGEFLEET_DATABASE_URL", "EDGEFLEET_BROKER_URL", "EDGEFLEET_ARTIFACT_URL"):
            env.pop(var, None)
        envs = {"now": env}
        if args.before_src is not None:
            envs = {"before": {**env, "PYTHONPATH": str(args.before_src.resolve())}, **envs}
        n = f"{args.devices:,} devices"
        enrol = f"{args.enrol:,}"
        results = {
            "edgefleet --help": startup(["--help"], envs, args.runs),
            f"status --json ({n})": startup(["status", "--json"], envs, args.runs),
            f"device list --json ({n})": startup(["device", "list", "--json"], envs, args.runs),
            f"{enrol} x `device add` (*)": single_adds(envs, folder, args.sample, args.enrol),
            f"`device add --from` {enrol} rows": bulk_adds(
                envs, folder, args.enrol, min(args.runs, 3)
            ),
        }
    load = os.getloadavg()[0]
    print(f"edgefleet CLI start-up and enrolment: medians of {args.runs} runs, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end")  # fmt: skip
    print_table(results, list(envs))
    print(f"  (*) the median of {args.sample} calls x {enrol}")


if __name__ == "__main__":
    main()
