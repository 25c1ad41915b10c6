"""Garbage collection of the artifact store (``edgefleet artifacts gc``): artifact rows no
variant uses, and files no artifact row or live benchmark grant names.

A file is kept while a device may still read it: its artifact row exists (every deployment
reaches its file through a variant and that row) or an unexpired grant names it (benchmark
candidates have no row). Files younger than ``grace_s`` are kept too: ``model add`` and
``compress`` store the file a moment before they commit its row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.shared import is_sha256
from edgefleet.shared.errors import ArtifactError

from ..home import Home
from ..registry import Artifact, ArtifactGrant, Variant

GRACE_S = 3600.0


@dataclass(frozen=True)
class CollectedFile:
    path: str  # relative to the store
    size: int


@dataclass(frozen=True)
class GarbageReport:
    """What ``collect_garbage`` deleted (or, with ``dry_run``, would delete)."""

    dry_run: bool
    artifact_rows: list[str] = field(default_factory=list)  # sha256 of the rows deleted
    files: list[CollectedFile] = field(default_factory=list)
    bytes_freed: int = 0
    kept_files: int = 0  # files something still references (or too young to judge)


def collect_garbage(
    home: Home, *, dry_run: bool = False, now: datetime | None = None, grace_s: float = GRACE_S
) -> GarbageReport:
    """Delete artifact rows no variant references, then every store file (and every
    interrupted upload in ``tmp/``) that no artifact row or unexpired grant names and that is
    older than ``grace_s``. ``dry_run`` reports the same without deleting anything."""
    now = now or datetime.now(UTC)
    with home.session(write=not dry_run) as session:
        unused = sorted(
            session.exec(
                select(Artifact.sha256).where(
                    col(Artifact.sha256).not_in(select(Variant.artifact_sha256).distinct())
                )
            ).all()
        )
        if unused and not dry_run:
            session.execute(sa.delete(Artifact).where(col(Artifact.sha256).in_(unused)))
        rows, granted = _referenced(session, now)
        referenced = (rows - set(unused)) | granted
    cutoff = time.time() - grace_s
    doomed: list[tuple[Path, CollectedFile]] = []
    kept = 0
    for path, sha in _stored_files(home.store.root):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if (sha is not None and sha in referenced) or stat.st_mtime > cutoff:
            kept += 1
            continue
        doomed.append((path, CollectedFile(str(path.relative_to(home.store.root)), stat.st_size)))
    freed = 0
    for path, collected in doomed:
        if not dry_run:
            _unlink(path)
        freed += collected.size
    return GarbageReport(
        dry_run=dry_run,
        artifact_rows=unused,
        files=[c for _, c in doomed],
        bytes_freed=freed,
        kept_files=kept,
    )


def delete_files(home: Home, shas: Iterable[str]) -> tuple[int, int]:
    """Delete the store files of ``shas`` that no artifact row or unexpired grant names any
    more; returns how many files and bytes went."""
    wanted = set(shas)
    if not wanted:
        return 0, 0
    with home.session() as session:
        rows, granted = _referenced(session, datetime.now(UTC))
    keep = (rows | granted) & wanted
    files = freed = 0
    for sha in sorted(wanted - keep):
        path = home.store.path_of(sha)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        _unlink(path)
        files, freed = files + 1, freed + size
    return files, freed


def _referenced(session: Session, now: datetime) -> tuple[set[str], set[str]]:
    """The digests of every artifact row, and those of unexpired grants."""
    rows = set(session.exec(select(Artifact.sha256)).all())
    granted = session.exec(
        select(ArtifactGrant.artifact_sha256).where(col(ArtifactGrant.expires_at) > now)
    ).all()
    return rows, set(granted)


def _stored_files(root: Path) -> Iterator[tuple[Path, str | None]]:
    """Every file of the store with the digest it is named by; interrupted uploads in
    ``tmp/`` (and anything else that is not a digest) with None."""
    for top in ("sha256", "tmp"):
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                path = Path(dirpath) / name
                yield path, name if top == "sha256" and is_sha256(name) else None


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot delete {path}: {exc.strerror or exc}") from exc
