"""What an `edgefleet` call costs a script: `--help`, `status --json` and `device list --json`
on a home with --devices devices, and enrolling 1,000 devices one `device add` at a time
against one `device add --from devices.csv`.

Every figure is a process as an operator's script starts it (the installed `edgefleet`
console script: interpreter, imports and work), the median of --runs: wall time and the CPU
time the process used (user + system). "imports" is the import time `python -X importtime`
reports for the same command; "heavy" names the big libraries it loaded (numpy, onnx,
onnxruntime, torch, uvicorn, starlette, fastapi) — none is needed by these commands.

1,000 single `device add` calls would take minutes; --sample of them are run and the median
multiplied by --enrol (the table says so). The bulk form runs for real, --enrol rows, into
a fresh out-dir each run.

Before/after: `--save before.json` on the old code, then `--before before.json` on the new
prints the two side by side. A version without `device add --from` shows "n/a" there.

Run: .venv/bin/python bench/cli_startup.py [--devices 1000] [--runs 7] [--sample 50]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from edgefleet.controller import init_home, load_settings, open_home
from edgefleet.controller.fleet import add_device
from edgefleet.controller.registry import DeviceCreate

HEAVY = ("numpy", "onnx", "onnxruntime", "torch", "uvicorn", "starlette", "fastapi")
PROFILES = ("rpi4", "rpi5", "x86-edge")


@dataclass
class Figure:
    command: str
    wall_s: float | None
    cpu_s: float | None
    imports_ms: float | None = None
    heavy: str = ""
    note: str = ""


def edgefleet() -> list[str]:
    script = Path(sys.executable).with_name("edgefleet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgefleet.controller"]


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall and CPU seconds of one process, and its exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = os.times().elapsed
    done = subprocess.run(args, env=env, capture_output=True, check=False)
    wall = os.times().elapsed - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def imports(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Milliseconds of imports `-X importtime` reports, and the heavy packages loaded."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edgefleet.controller", *args],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    total_us, heavy = 0, set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit() and not name.startswith("  "):  # a top-level import
            total_us += int(cumulative)
        if name.strip().split(".")[0] in HEAVY:
            heavy.add(name.strip().split(".")[0])
    return total_us / 1000, " ".join(sorted(heavy)) or "-"


def measure(label: str, args: list[str], env: dict[str, str], runs: int) -> Figure:
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu, code = run_once([*edgefleet(), *args], env)
        if code != 0:
            return Figure(label, None, None, note=f"exit {code}")
        walls.append(wall)
        cpus.append(cpu)
    ms, heavy = imports(args, env)
    return Figure(label, statistics.median(walls), statistics.median(cpus), ms, heavy)


def build_home(folder: Path, devices: int) -> Path:
    """A home with ``devices`` devices, enrolled through the library (the same way whatever
    version of the CLI is measured)."""
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


def single_adds(env: dict[str, str], folder: Path, sample: int, enrol: int) -> Figure:
    walls, cpus = [], []
    for i in range(sample):
        args = ["device", "add", f"one-{i:05d}", "--profile", "rpi4", "-l", "site=bench",
                "--out", str(folder / f"one-{i:05d}.toml")]  # fmt: skip
        wall, cpu, code = run_once([*edgefleet(), *args], env)
        if code != 0:
            return Figure(f"{enrol} x `device add`", None, None, note=f"exit {code}")
        walls.append(wall)
        cpus.append(cpu)
    return Figure(
        f"{enrol:,} x `device add`",
        statistics.median(walls) * enrol,
        statistics.median(cpus) * enrol,
        note=f"median of {sample} calls x {enrol:,}",
    )


def bulk_add(env: dict[str, str], folder: Path, enrol: int, runs: int) -> Figure:
    label = f"`device add --from` {enrol:,} rows"
    walls, cpus = [], []
    for r in range(runs):
        csv = folder / f"bulk-{r}.csv"
        rows = [f"bulk{r}-{i:05d},{PROFILES[i % 3]},site=s{i % 7};rack=r{i % 40}"
                for i in range(enrol)]  # fmt: skip
        csv.write_text("name,profile,labels\n" + "\n".join(rows) + "\n")
        args = ["device", "add", "--from", str(csv), "--out-dir", str(folder / f"bulk-{r}")]
        wall, cpu, code = run_once([*edgefleet(), *args], env)
        if code != 0:
            return Figure(label, None, None, note="n/a (no bulk form)" if code == 2 else "")
        walls.append(wall)
        cpus.append(cpu)
    return Figure(label, statistics.median(walls), statistics.median(cpus),
                  note=f"median of {runs} runs")  # fmt: skip


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def print_table(figures: list[Figure], before: dict[str, Figure]) -> None:
    head = ["command", "wall s", "CPU s", "imports ms", "heavy loaded"]
    if before:
        head[1:1] = ["before wall s", "before CPU s"]
    rows = []
    for f in figures:
        row = [f.command, seconds(f.wall_s), seconds(f.cpu_s),
               "-" if f.imports_ms is None else f"{f.imports_ms:.0f}", f.heavy or "-"]  # fmt: skip
        if before:
            b = before.get(f.command)
            row[1:1] = [seconds(b.wall_s if b else None), seconds(b.cpu_s if b else None)]
            if b and b.heavy and b.heavy != "-":
                row[-1] += f" (before: {b.heavy})"
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    for f in figures:
        if f.note:
            print(f"  {f.command}: {f.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="devices in the home")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sample", type=int, default=50, help="single `device add` calls")
    parser.add_argument("--enrol", type=int, default=1000, help="devices to enrol")
    parser.add_argument("--save", type=Path, help="write the figures here (JSON)")
    parser.add_argument("--before", type=Path, help="figures saved by an older version")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgefleet-cli-") as tmp:
        folder = Path(tmp)
        home_dir = build_home(folder, args.devices)
        env = {**os.environ, "EDGEFLEET_HOME": str(home_dir), "COLUMNS": "120"}
        for var in ("EDGEFLEET_DATABASE_URL", "EDGEFLEET_BROKER_URL", "EDGEFLEET_ARTIFACT_URL"):
            env.pop(var, None)
        n = f"{args.devices:,} devices"
        figures = [
            measure("edgefleet --help", ["--help"], env, args.runs),
            measure(f"status --json ({n})", ["status", "--json"], env, args.runs),
            measure(f"device list --json ({n})", ["device", "list", "--json"], env, args.runs),
            single_adds(env, folder, args.sample, args.enrol),
            bulk_add(env, folder, args.enrol, min(args.runs, 3)),
        ]
    before: dict[str, Figure] = {}
    if args.before is not None:
        before = {d["command"]: Figure(**d) for d in json.loads(args.before.read_text())}
    print(f"edgefleet CLI start-up and enrolment, median of {args.runs} runs "
          f"({os.cpu_count()} CPUs)")  # fmt: skip
    print_table(figures, before)
    if args.save is not None:
        args.save.write_text(json.dumps([asdict(f) for f in figures], indent=1))


if __name__ == "__main__":
    main()
