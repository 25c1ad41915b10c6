"""The ``edgefleet`` command line: thin commands over the service functions.

Each command parses its arguments, calls one service function and renders
the result (a rich table, or JSON with ``--json``). Expected failures print
``error: <message>`` on stderr and exit 2 (bad usage or input) or 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from edgefleet.shared.errors import ConfigError, EdgefleetError, ModelError, NotFound

from . import _catalog, _deployments, _devices
from ._home import Home, available_profiles, init_home, open_home
from ._models import DeploymentState, DeviceCreate, DevicePublic, ModelVersionPublic
from ._settings import Settings, load_settings

EXIT_FAILURE = 1
EXIT_USAGE = 2
# the invocation was wrong (a bad value, a name that does not exist, a file that is not a model)
_USAGE_ERRORS = (ConfigError, ModelError, NotFound)


class _Group(TyperGroup):
    """Turns edgefleet's own errors into one line on stderr and an exit code, anywhere below."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except EdgefleetError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            code = EXIT_USAGE if isinstance(exc, _USAGE_ERRORS) else EXIT_FAILURE
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=_Group,
    help="edgefleet: roll ML models out to fleets of edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
device_app = typer.Typer(help="Enrol, list, show and remove devices.", no_args_is_help=True)
model_app = typer.Typer(help="Add, list and show models and their versions.", no_args_is_help=True)
profile_app = typer.Typer(help="List and show device profiles.", no_args_is_help=True)
app.add_typer(device_app, name="device")
app.add_typer(model_app, name="model")
broker_app = typer.Typer(help="Files for the MQTT broker (Mosquitto).", no_args_is_help=True)
app.add_typer(profile_app, name="profile")
app.add_typer(broker_app, name="broker")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.callback()
def _options(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar="EDGEFLEET_HOME",
            help="The edgefleet home folder (config, keys, registry, artifacts).",
            show_default="~/.edgefleet",
        ),
    ] = None,
) -> None:
    """edgefleet: roll ML models out to fleets of edge devices."""
    ctx.obj = home  # settings are read lazily, so --help works even with a broken config


def _settings(ctx: typer.Context) -> Settings:
    return load_settings(ctx.find_root().obj)


@contextmanager
def _home(ctx: typer.Context) -> Iterator[Home]:
    home = open_home(_settings(ctx))
    try:
        yield home
    finally:
        home.close()


def _print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    typer.echo(json.dumps(value, indent=2, sort_keys=False))


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _table(*headers: str, **kw: Any) -> Table:
    """A table whose first column (a name people copy) never wraps or truncates."""
    table = Table(**kw)
    for i, header in enumerate(headers):
        table.add_column(header, no_wrap=i == 0, overflow="fold")
    return table


# -- init ---------------------------------------------------------------------


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the home folder, config, Ed25519 signing key and registry, or update them."""
    report = init_home(_settings(ctx))
    out = _console()
    for path in report.created:
        out.print(f"created  {path}")
    if report.migrations_applied:
        versions = ", ".join(str(v) for v in report.migrations_applied)
        out.print(f"migrated {report.database} (schema {versions})")
    out.print(f"home     {report.home}")
    out.print(f"database {report.database}")
    out.print(f"key id   {report.key_id}")


# -- device -------------------------------------------------------------------


@device_app.command("add")
def device_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Device id: letters, digits, '.', '_' or '-'.")],
    profile: Annotated[str, typer.Option("--profile", "-p", help="Device profile, e.g. rpi4.")],
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", help="A key=value label; repeat for more."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the agent config here (mode 0600); without it, print it on stdout.",
        ),
    ] = None,
    state_dir: Annotated[
        str, typer.Option(help="The agent's state folder on the device.")
    ] = _devices.DEFAULT_STATE_DIR,
) -> None:
    """Enrol a device and produce its agent config with fresh credentials."""
    new = DeviceCreate(name=name, profile=profile, labels=_devices.parse_labels(label or []))
    with _home(ctx) as home:
        enrolled = _devices.add_device(home, new, out=out, state_dir=state_dir)
    if out is None:
        typer.echo(enrolled.agent_config, nl=False)
        typer.echo("note: this config holds the device's credentials; keep it private", err=True)
    else:
        typer.echo(f"enrolled {name} ({profile}); agent config written to {out} (mode 0600)")


@device_app.command("list")
def device_list(
    ctx: typer.Context,
    profile: Annotated[str | None, typer.Option(help="Only devices of this profile.")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="Only devices with key=value.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List enrolled devices."""
    with _home(ctx) as home:
        devices = _devices.list_devices(
            home, profile=profile, labels=_devices.parse_labels(label or [])
        )
    if as_json:
        _print_json(devices)
        return
    table = _table("device", "profile", "labels", "online", "last seen", "agent")
    for d in devices:
        table.add_row(
            d.name, d.profile, _labels(d.labels), _yes_no(d.online), _when(d.last_seen),
            d.agent_version or "-",
        )  # fmt: skip
    _console().print(table)


@device_app.command("show")
def device_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The device id.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one device."""
    with _home(ctx) as home:
        device = _devices.get_device(home, name)
    if as_json:
        _print_json(device)
        return
    _console().print(_device_details(device))


@device_app.command("remove")
def device_remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The device id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a device with its deployments, events and telemetry; its credentials stop working."""
    if not yes:
        typer.confirm(f"remove device {name} and its history?", abort=True)
    with _home(ctx) as home:
        _devices.remove_device(home, name)
    typer.echo(f"removed {name}")


# -- broker -------------------------------------------------------------------


@broker_app.command("config")
def broker_config(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for passwd, acl and edgefleet.conf.")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Write Mosquitto's password file and ACL: every device may read only its command topic
    and write only its own status, events and telemetry; the controller (the user in
    broker_url) may do everything under the topic prefix; nobody else gets in.

    Run again after `device add` or `device remove`, then reload Mosquitto (SIGHUP).
    """
    from ._broker_config import write_broker_config

    with _home(ctx) as home:
        written = write_broker_config(home, out)
    if as_json:
        _print_json({k: v if isinstance(v, int) else str(v) for k, v in vars(written).items()})
        return
    out_ = _console()
    who = f"controller {written.controller_user!r} and {written.devices} device(s)"
    out_.print(f"wrote {written.password_file} ({who}), {written.acl_file}, {written.conf_file}")
    out_.print(
        f"use it: `include_dir {written.folder}` in mosquitto.conf (or copy edgefleet.conf "
        "into /etc/mosquitto/conf.d/); the mosquitto user must be able to read the folder "
        "and the files (mode 0640, group mosquitto when it exists); reload with SIGHUP"
    )


# -- model --------------------------------------------------------------------


@model_app.command("add")
def model_add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name, e.g. digits.")],
    version: Annotated[str, typer.Option("--version", "-v", help="Version, e.g. 1.0.0.")],
    sample: Annotated[
        Path | None,
        typer.Option(
            help="An .npz whose first array (or arrays named after the inputs) gives the "
            "smoke-test sample; without it one is generated from the input signature."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a model version: check it loads, store it, record its signature and smoke test."""
    with _home(ctx) as home:
        added = _catalog.add_model(home, file, name=name, version=version, sample=sample)
    if as_json:
        _print_json(added)
        return
    base = added.variants[0]
    typer.echo(f"added {added.ref}: {base.size} bytes, sha256 {base.sha256[:12]}")


@model_app.command("list")
def model_list(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Only versions of this model.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List model versions."""
    with _home(ctx) as home:
        versions = _catalog.list_models(home, name=name)
    if as_json:
        _print_json(versions)
        return
    table = _table("model", "version", "variants", "size", "inputs", "added")
    for v in versions:
        table.add_row(
            v.name, v.version, ", ".join(x.name for x in v.variants),
            _size(v.variants[0].size if v.variants else 0), _io(v, "inputs"), _when(v.created_at),
        )  # fmt: skip
    _console().print(table)


@model_app.command("show")
def model_show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION, e.g. digits:1.0.0.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one model version: signature, smoke test and variants."""
    with _home(ctx) as home:
        version = _catalog.get_model_version(home, ref)
    if as_json:
        _print_json(version)
        return
    out = _console()
    out.print(
        f"[bold]{version.ref}[/]  added {_when(version.created_at)} from {version.source_name}"
    )
    io = _table("", "tensor", "dtype", "shape", title="signature", title_justify="left")
    for kind in ("inputs", "outputs"):
        for spec in getattr(version.io, kind):
            io.add_row(kind[:-1], spec.name, spec.dtype, _shape(spec.shape))
    out.print(io)
    smoke = ", ".join(f"{k} {_shape(t.shape)}" for k, t in version.smoke_test.inputs.items())
    out.print(
        f"smoke test: {smoke} (rtol {version.smoke_test.rtol}, atol {version.smoke_test.atol})"
    )
    out.print("variants:")
    for v in version.variants:  # lines, not a table: the digest must stay copyable
        out.print(
            f"  {v.name:<10} {v.profile or 'any':<10} {_size(v.size):>9}  sha256:{v.sha256}",
            soft_wrap=True,
        )


# -- deploy, status, events ----------------------------------------------------


@app.command()
def deploy(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION of the model, e.g. digits:1.0.0.")],
    device: Annotated[
        list[str] | None,
        typer.Option("--device", "-d", help="A target device; repeat for more."),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Every device of this profile.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", help="Every device with this key=value label; repeatable."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow progress until every target is done.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --wait: give up after this many seconds.", min=0)
    ] = 600.0,
    as_json: JsonFlag = False,
) -> None:
    """Record a deployment of a model version to devices; `edgefleet serve` sends it.

    With --wait the exit code is 0 only if every target committed.
    """
    labels = _devices.parse_labels(label or []) or None
    with _home(ctx) as home:
        rows = _deployments.deploy(
            home, ref, devices=device or None, profile=profile, labels=labels
        )
        if wait:
            rows = _wait_for(home, rows[0].deployment_id, timeout, quiet=as_json)
    if as_json:
        _print_json(rows)
    else:
        typer.echo(f"deployment {rows[0].deployment_id}: {len(rows)} device(s)")
        for row in rows:
            error = f"  {row.error_code}: {row.error_message}" if row.error_code else ""
            typer.echo(f"  {row.device:<24} {row.profile:<10} {row.model:<28} {row.state}{error}")
    if wait and any(r.state != DeploymentState.COMMITTED.value for r in rows):
        if not as_json:
            typer.echo("error: not every target committed", err=True)
        raise typer.Exit(EXIT_FAILURE)


def _wait_for(
    home: Home, deployment_id: str, timeout: float, *, quiet: bool
) -> list[_deployments.DeploymentPublic]:
    """Poll the registry (the daemon writes progress there) until every row is finished."""
    import time

    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    while True:
        rows = _deployments.deployment_progress(home, deployment_id)
        for r in rows:
            if not quiet and last.get(r.device) != r.state:
                typer.echo(f"{r.device}: {r.state}", err=True)
            last[r.device] = r.state
        if all(r.state in _deployments.FINISHED for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


@app.command()
def status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show every device: online, model, deployment state, last p95 latency, last seen."""
    with _home(ctx) as home:
        rows = _deployments.fleet_status(home)
    if as_json:
        _print_json(rows)
        return
    table = _table("device", "online", "profile", "model", "state", "p95", "last seen")
    for r in rows:
        table.add_row(
            r.device, _yes_no(r.online), r.profile, r.model or "-", r.state or "-",
            f"{r.p95_ms:.2f} ms" if r.p95_ms is not None else "-", _when(r.last_seen),
        )  # fmt: skip
    _console().print(table)


@app.command()
def events(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option("--device", "-d", help="Only this device.")] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest events.", min=1)] = 200,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show deployment events reported by the devices, oldest first."""
    with _home(ctx) as home:
        rows = _deployments.list_events(home, device=device, limit=limit)
        if as_json and not follow:
            _print_json(rows)
            return
        if not follow:
            table = _table("at", "device", "deployment", "state", "error", "message")
            for e in rows:
                table.add_row(
                    _when(e.at), e.device, e.deployment_id or "-", e.state,
                    e.error_code or "-", e.message,
                )  # fmt: skip
            _console().print(table)
            return
        import time

        last = 0
        try:
            while True:
                for e in rows:
                    if as_json:  # one object a line, for scripts
                        typer.echo(json.dumps(e.model_dump(mode="json")))
                    else:
                        error = f" {e.error_code}: {e.message}" if e.error_code else ""
                        typer.echo(
                            f"{_when(e.at)}  {e.device:<20} {e.deployment_id or '-':<28} "
                            f"{e.state}{error}"
                        )
                    last = max(last, e.id)
                time.sleep(0.5)
                rows = _deployments.list_events(home, device=device, limit=1000, after=last)
        except KeyboardInterrupt:
            return


@app.command()
def serve(
    ctx: typer.Context,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the daemon: MQTT ingest, dispatch of pending deployments, artifact server."""
    import logging
    import signal
    import threading

    from ._daemon import Daemon

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with _home(ctx) as home:
        Daemon(home).run(stop)


# -- compress -----------------------------------------------------------------


@app.command()
def compress(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION of the model, e.g. digits:1.0.0.")],
    profile: Annotated[
        str, typer.Option("--profile", "-p", help="The device profile to compress for.")
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="An .npz with 'inputs' (and 'labels' for top1); part calibrates, "
            "the rest evaluates.",
        ),
    ],
    metric: Annotated[
        str, typer.Option(help="How outputs are compared with fp32: top1, mse or cosine.")
    ] = "top1",
    max_drop: Annotated[
        float | None,
        typer.Option(help="The largest metric drop allowed; the profile's budget by default."),
    ] = None,
    torch_source: Annotated[
        str | None,
        typer.Option(
            "--torch",
            help="The PyTorch model, for pruning and distillation: a TorchScript file "
            "or module:function returning an nn.Module.",
        ),
    ] = None,
    torch_state: Annotated[
        Path | None,
        typer.Option("--torch-state", help="A state-dict file for the module:function model."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the full report here as JSON.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the data split and training.")] = 0,
    latency_runs: Annotated[
        int, typer.Option(help="Timed runs per candidate for the latency figures.", min=1)
    ] = 100,
    measure_on: Annotated[
        str | None,
        typer.Option(
            "--measure-on",
            metavar="DEVICE",
            help="Take latency from this device (online, of the profile) instead of this "
            "machine: it benchmarks every candidate, served by `edgefleet serve`.",
        ),
    ] = None,
    measure_timeout: Annotated[
        float,
        typer.Option(
            "--measure-timeout",
            metavar="S",
            help="Seconds to wait for the device's result on each candidate.",
            min=0.1,
        ),
    ] = 120.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of a table.")
    ] = False,
) -> None:
    """Compress a model version for a profile, choosing the variant by measurement.

    Every pass the profile allows makes candidates; each is measured against fp32 (metric on
    held-out data, size, latency side by side). The best inside the profile's budget, by its
    objective, is recorded as the version's variant for that profile, and `deploy` sends it
    to that profile's devices. Exits 1, listing the closest candidates, when none fits.
    With --measure-on, the latency that decides is measured on that device.
    """
    from ._compression import compress_model_version

    with _home(ctx) as home, _progress_bars() as progress:
        result = compress_model_version(
            home, ref, profile, data, metric=metric, max_drop=max_drop,
            torch_source=torch_source, torch_state=torch_state, report_path=report,
            seed=seed, latency_runs=latency_runs, progress=progress, measure_on=measure_on,
            measure_timeout_s=measure_timeout,
        )  # fmt: skip
    if as_json:
        _print_json(result.to_dict())
        return
    out = _console()
    out.print(_candidates_table(result.report))
    chosen = result.report.chosen
    out.print(
        f"recorded {result.ref}/{result.variant.name} for {profile}: {chosen.name}, "
        f"{_size(result.variant.size)}, sha256 {result.variant.sha256[:12]}"
    )


@contextmanager
def _progress_bars() -> Iterator[Any]:
    """A progress callback drawing one rich bar per stage on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bars = Progress(
        TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
        console=Console(stderr=True), transient=False,
    )  # fmt: skip
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    with bars:
        yield update


def _candidates_table(report: Any) -> Table:  # compress.CompressionReport
    reference = report.reference
    title = f"{report.profile}: objective {report.objective}"
    where = ""
    if report.measured_on:
        title += f", latency measured on {report.measured_on}"
        where = f"{report.measured_on} "
    # p95 and the recipes are in --json and --report: the table has to fit 80 columns
    table = Table(
        title=title, title_justify="left",
        caption="p95 latency and recipes: see --json or --report", caption_justify="left",
    )  # fmt: skip
    table.add_column("candidate", no_wrap=True)
    for header in ("smaller", "faster", f"{report.metric} Δ", f"{where}p50 ms"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("budget", overflow="fold")
    for c in report.candidates:
        chosen = c.name == report.chosen.name
        status = "[bold green]chosen[/]" if chosen else "; ".join(b.text for b in c.breaches)
        table.add_row(
            c.name, _ratio(reference.size_bytes, c.size_bytes),
            _ratio(reference.latency_ms_p50, c.latency_ms_p50),
            f"{c.metric - reference.metric:+.4f}", f"{c.latency_ms_p50:.3f}", status or "fits",
        )  # fmt: skip
    for item in report.skipped:
        table.add_row(item["candidate"], "", "", "", "", f"skipped: {item['why']}")
    return table


def _ratio(reference: float, candidate: float) -> str:
    return f"{reference / candidate:.2f}x" if candidate > 0 else "-"


# -- profile ------------------------------------------------------------------


@profile_app.command("list")
def profile_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the device profiles (built in, and from the home folder's profiles/)."""
    profiles = list(available_profiles(_settings(ctx)).values())
    if as_json:
        _print_json(profiles)
        return
    table = _table("profile", "arch", "isa", "cores", "RAM", "threads", "max size", "max latency")
    for p in profiles:
        table.add_row(
            p.name, p.arch, " ".join(p.isa_features), str(p.cores), f"{p.ram_mb} MB",
            str(p.runtime.intra_op_threads or "auto"), _size(p.budgets.max_size_bytes),
            f"{p.budgets.max_latency_ms:g} ms",
        )  # fmt: skip
    _console().print(table)


@profile_app.command("show")
def profile_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The profile name, e.g. rpi4.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one device profile in full."""
    from ._profiles import get_profile

    profile = get_profile(available_profiles(_settings(ctx)), name)
    if as_json:
        _print_json(profile)
        return
    out = _console()
    out.print(f"[bold]{profile.name}[/]  {profile.description}  ({profile.source})")
    for key, value in profile.model_dump(mode="json", exclude={"name", "description"}).items():
        out.print(f"  {key}: {value}")


# -- rendering ----------------------------------------------------------------


def _device_details(d: DevicePublic) -> Table:
    table = Table(show_header=False, box=None)
    for key, value in (
        ("device", d.name),
        ("profile", d.profile),
        ("labels", _labels(d.labels)),
        ("enrolled", _when(d.created_at)),
        ("online", _yes_no(d.online)),
        ("last seen", _when(d.last_seen)),
        ("agent", d.agent_version or "-"),
        ("sequence", str(d.last_sequence)),
    ):
        table.add_row(key, value)
    return table


def _labels(labels: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _shape(shape: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _io(version: ModelVersionPublic, kind: str) -> str:
    return ", ".join(f"{s.name}{_shape(s.shape)}" for s in getattr(version.io, kind))


def main() -> None:
    app()
