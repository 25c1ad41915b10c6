"""The home folder is the operator's alone: `init` makes it 0700 and the SQLite registry 0600
(created so before SQLite writes a byte, whatever the umask), and tightens an older home."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.controller import load_settings, open_home

from .conftest import Cli


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common 022: what made registry.db 0644 before."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _side_files(db: Path) -> list[Path]:
    return [p for p in db.parent.glob(db.name + "-*") if p.is_file()]


def test_init_makes_the_home_0700_and_the_registry_0600(
    cli: Cli, home_dir: Path, loose_umask: None
) -> None:
    cli.ok("init")
    db = home_dir / "registry.db"
    assert _mode(home_dir) == 0o700
    assert _mode(db) == 0o600
    cli.ok("device", "add", "pi-1", "--profile", "rpi4")  # a write: the WAL side files exist
    with sqlite3.connect(db) as conn:  # held open, so the side files are there to look at
        conn.execute("SELECT count(*) FROM device").fetchone()
        sides = _side_files(db)
        assert sides, "SQLite in WAL mode keeps -wal and -shm beside an open database"
        assert {p.name: _mode(p) for p in sides} == {p.name: 0o600 for p in sides}
    assert _mode(db) == 0o600


def test_init_tightens_an_existing_home(cli: Cli, home_dir: Path, loose_umask: None) -> None:
    cli.ok("init")
    db = home_dir / "registry.db"
    home_dir.chmod(0o755)  # as an older edgefleet left them
    db.chmod(0o644)
    cli.ok("device", "add", "pi-1", "--profile", "rpi4")
    cli.ok("init")
    assert _mode(home_dir) == 0o700
    assert _mode(db) == 0o600
    assert "pi-1" in cli.ok("device", "list").stdout  # the same registry, untouched


def test_a_registry_outside_the_home_is_created_0600(
    tmp_path: Path, home_dir: Path, loose_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "elsewhere" / "fleet.db"
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", f"sqlite:///{db}")
    opened = open_home(load_settings(home_dir), require_init=False, migrate=True)
    try:
        assert _mode(db) == 0o600
        assert _mode(db.parent) == 0o700  # made for it, so made private
        with sqlite3.connect(db) as conn:  # a real, migrated database
            assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] >= 5
    finally:
        opened.close()
