"""Enrolling many devices at once (``edgefleet device add --from devices.csv``): every line
checked before anything is written, then one registry transaction for all of them and one
agent config (mode 0600) per device.

One `device add` per device pays for a process, the registry's schema check, the profiles
and the signing keys every time (about a second here, see bench/cli_startup.py); here they
are paid once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import col, select

from edgefleet.shared import check_device_id
from edgefleet.shared.errors import AlreadyExists, ConfigError, Conflict, EdgefleetError

from ..home import DeviceProfile, Home, record_profile, write_private
from ..registry import Device, DeviceCreate, DevicePublic
from ._devices import (
    DEFAULT_STATE_DIR,
    AgentSettings,
    Credentials,
    device_row,
    parse_labels,
    render_agent_config,
)

COLUMNS = ("name", "profile", "labels", "state_dir")
MAX_DEVICES = 100_000  # one file, one transaction; split larger fleets
SHOWN_PROBLEMS = 100  # a file in the wrong format would otherwise print every one of its lines
_NAMES_PER_QUERY = 500  # bound parameters of one IN (...): below every database's limit

# progress(stage, done, total), as compression reports it
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class NewDevice:
    """One device to enrol, its agent's state folder, and the CSV line it came from."""

    device: DeviceCreate
    state_dir: str = DEFAULT_STATE_DIR
    line: int | None = None

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else f"device {self.device.name!r}"


@dataclass(frozen=True)
class BulkEnrolment:
    """What ``add_devices`` did: the devices enrolled (each config in ``config_path``) and
    those skipped because they were enrolled already."""

    enrolled: list[DevicePublic]
    skipped: list[str]
    out_dir: Path

    def config_path(self, name: str) -> Path:
        return config_path(self.out_dir, name)


def config_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.toml"  # the id is safe as a file name (check_device_id)


def enrol_from_csv(
    home: Home,
    path: Path,
    out_dir: Path,
    *,
    profile: str | None = None,
    labels: Mapping[str, str] | None = None,
    state_dir: str = DEFAULT_STATE_DIR,
    skip_existing: bool = False,
    progress: Progress | None = None,
) -> BulkEnrolment:
    """Enrol the devices listed in ``path`` (``read_devices_csv``) and write each one's agent
    config into ``out_dir`` (``add_devices``). ``profile``, ``labels`` and ``state_dir`` are
    every line's defaults; a line's own value wins (its labels are added to ``labels``)."""
    devices = read_devices_csv(
        path, profile=profile, labels=labels, state_dir=state_dir, profiles=home.profiles()
    )
    return add_devices(home, devices, out_dir, skip_existing=skip_existing, progress=progress)


def read_devices_csv(
    path: Path,
    *,
    profile: str | None = None,
    labels: Mapping[str, str] | None = None,
    state_dir: str = DEFAULT_STATE_DIR,
    profiles: Collection[str] | None = None,
) -> list[NewDevice]:
    """The devices in a CSV file with a header line naming its columns: ``name``, and
    ``profile`` (unless ``profile`` gives every line one), ``labels`` (``k=v;k2=v2``) and
    ``state_dir`` if wanted, in any order. Blank lines and lines starting with ``#`` are
    skipped. Every line is checked (with ``profiles``, the profile names too) and every bad
    one is named in a single :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # the byte-order mark spreadsheets write
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [
            (reader.line_num, [cell.strip() for cell in row])
            for row in reader
            if any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")
        ]
    except csv.Error as exc:
        raise ConfigError(f"{path.name}: line {reader.line_num}: {exc}") from exc
    if not rows:
        raise ConfigError(f"{path.name} is empty: it needs a header line ({', '.join(COLUMNS)})")
    header_line, header = rows[0]
    columns = _columns(path.name, header_line, header, has_profile=profile is not None)
    if len(rows) - 1 > MAX_DEVICES:
        raise ConfigError(f"{path.name} lists more than {MAX_DEVICES:,} devices: split it")
    if len(rows) == 1:
        raise ConfigError(f"{path.name} lists no devices, only its header")
    defaults = _Defaults(profile, dict(labels or {}), state_dir, profiles)
    devices: list[NewDevice] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for line, cells in rows[1:]:
        found = _device(line, cells, columns, defaults)
        if isinstance(found, str):
            problems.append(f"line {line}: {found}")
            continue
        name = found.device.name
        if name in first_line:
            problems.append(f"line {line}: device {name!r} is also on line {first_line[name]}")
            continue
        first_line[name] = line
        devices.append(found)
    if problems:
        title = f"{path.name}: {_count(len(problems), 'bad line')}; nothing was enrolled"
        raise ConfigError(_listed(title, problems))
    return devices


@dataclass(frozen=True)
class _Defaults:
    profile: str | None
    labels: dict[str, str]
    state_dir: str
    profiles: Collection[str] | None


def _columns(source: str, line: int, header: list[str], *, has_profile: bool) -> dict[str, int]:
    names = [cell.lower() for cell in header]
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise ConfigError(
            f"{source}: line {line}: unknown column {unknown[0]!r}: the header line names "
            f"the columns, of {', '.join(COLUMNS)}"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{source}: line {line}: column {twice[0]!r} is named twice")
    needed = ["name"] + ([] if has_profile else ["profile"])
    missing = [n for n in needed if n not in names]
    if missing:
        hint = "" if missing != ["profile"] else " (or give every line one with --profile)"
        raise ConfigError(f"{source}: line {line}: the header has no {missing[0]!r} column{hint}")
    return {n: i for i, n in enumerate(names)}


def _device(
    line: int, cells: list[str], columns: dict[str, int], defaults: _Defaults
) -> NewDevice | str:
    """The line's device, or what is wrong with it (everything, in one text)."""
    if any(cells[len(columns) :]):  # empty cells past the last column are padding
        return f"{len(cells)} fields, but the header names {len(columns)} columns"

    def cell(column: str) -> str:
        i = columns.get(column)
        return cells[i] if i is not None and i < len(cells) else ""

    wrong: list[str] = []
    name = cell("name")
    try:
        check_device_id(name)
    except ConfigError as exc:
        wrong.append("no device name" if not name else exc.message)
    profile = cell("profile") or defaults.profile or ""
    if not profile:
        wrong.append("no profile")
    elif defaults.profiles is not None and profile not in defaults.profiles:
        wrong.append(f"unknown profile {profile!r} (known: {', '.join(defaults.profiles)})")
    labels = dict(defaults.labels)
    try:
        labels |= parse_labels(p.strip() for p in cell("labels").split(";") if p.strip())
    except ConfigError as exc:
        wrong.append(exc.message)
    if wrong:
        return "; ".join(wrong)
    new = DeviceCreate(name=name, profile=profile, labels=labels)
    return NewDevice(new, state_dir=cell("state_dir") or defaults.state_dir, line=line)


def add_devices(
    home: Home,
    devices: Sequence[NewDevice],
    out_dir: Path,
    *,
    skip_existing: bool = False,
    progress: Progress | None = None,
) -> BulkEnrolment:
    """Enrol ``devices`` in one registry transaction and write each one's agent config to
    ``out_dir/NAME.toml`` (mode 0600; the folder is made mode 0700 if missing).

    Refused before anything is written: an unknown profile, a name given twice, a device
    already enrolled (unless ``skip_existing``: then it is left as it is and gets no new
    config), a config file that already exists. The files are written before the commit
    and removed if it fails, as ``add_device`` does. Mosquitto's password file and ACL are
    not touched: write them once afterwards (``write_broker_config``)."""
    problems: list[str] = []
    seen: set[str] = set()
    profiles: dict[str, DeviceProfile] = {}
    for d in devices:
        name = d.device.name
        if name in seen:
            problems.append(f"{d.where}: device {name!r} is listed twice")
        seen.add(name)
        try:
            profiles[d.device.profile] = home.profile(d.device.profile)
        except EdgefleetError as exc:
            problems.append(f"{d.where}: {exc.message}")
    if problems:
        title = f"{_count(len(problems), 'bad device')}; nothing was enrolled"
        raise ConfigError(_listed(title, problems))
    existing = _enrolled_names(home, sorted(seen))
    if existing and not skip_existing:
        raise AlreadyExists(
            _listed(
                f"{_count(len(existing), 'device')} already enrolled; nothing was enrolled "
                "(--skip-existing enrols the others)",
                sorted(existing),
            )
        )
    todo = [d for d in devices if d.device.name not in existing]
    taken = [p.name for d in todo if (p := config_path(out_dir, d.device.name)).exists()]
    if taken:
        raise ConfigError(
            _listed(
                f"{_count(len(taken), 'agent config')} already in {out_dir}; remove them or "
                "choose another --out-dir",
                taken,
            )
        )
    enrolled = _enrol(home, todo, out_dir, profiles, progress) if todo else []
    skipped = [d.device.name for d in devices if d.device.name in existing]
    return BulkEnrolment(enrolled=enrolled, skipped=skipped, out_dir=out_dir)


def _enrol(
    home: Home,
    todo: Sequence[NewDevice],
    out_dir: Path,
    profiles: Mapping[str, DeviceProfile],
    progress: Progress | None,
) -> list[DevicePublic]:
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc
    written: list[Path] = []
    try:
        with home.session(write=True) as session:
            for profile in profiles.values():
                record_profile(session, profile)
            session.flush()  # the profile rows first: the devices' foreign keys point at them
            shared = AgentSettings.of(home)  # under the write lock: no rotation in between
            rows = []
            for done, new in enumerate(todo, start=1):
                d = new.device
                credentials = Credentials.fresh()
                row = device_row(d.name, d.profile, d.labels, credentials)
                session.add(row)
                rows.append(row)
                path = config_path(out_dir, d.name)
                text = render_agent_config(shared, d.name, d.profile, credentials, new.state_dir)
                write_private(path, text)  # mode 0600: it holds the device's secrets
                written.append(path)
                if progress is not None:
                    progress("enrolling", done, len(todo))
            session.flush()
            return [DevicePublic.of(row) for row in rows]
    except Conflict as exc:  # one of them was enrolled by someone else since we looked
        _remove(written)
        raise AlreadyExists(
            "another enrolment added some of these devices meanwhile; nothing was enrolled"
        ) from exc
    except BaseException:
        _remove(written)
        raise


def _enrolled_names(home: Home, names: Sequence[str]) -> set[str]:
    found: set[str] = set()
    with home.session() as session:
        for i in range(0, len(names), _NAMES_PER_QUERY):
            chunk = names[i : i + _NAMES_PER_QUERY]
            found.update(session.exec(select(Device.name).where(col(Device.name).in_(chunk))))
    return found


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _listed(title: str, items: Sequence[str]) -> str:
    shown = [f"  {item}" for item in items[:SHOWN_PROBLEMS]]
    if len(items) > SHOWN_PROBLEMS:
        shown.append(f"  ... and {len(items) - SHOWN_PROBLEMS:,} more")
    return "\n".join([f"{title}:", *shown])
