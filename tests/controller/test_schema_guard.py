"""Only `init` and `upgrade` change the registry's schema. Every other command, `status` and
`serve` included, refuses a database that is empty or at another schema, names the command
to run, and leaves the database exactly as it was (not even creating the file or a table)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgefleet.controller import SCHEMA_VERSION, create_engine, current_version, upgrade
from edgefleet.controller.registry import MIGRATIONS

from .conftest import Cli, sqlite_snapshot

READERS = [
    ("status",),
    ("events",),
    ("device", "list"),
    ("model", "list"),
    ("rollout", "list"),
    ("deploy", "digits:1.0.0", "--device", "pi-1"),
    ("telemetry", "prune"),
    ("artifacts", "gc"),
    ("serve",),  # the daemon too: it must not migrate (nor start) behind the operator's back
]


def _registry_at(home: Path, version: int) -> Path:
    """Replace the home's registry by one migrated only up to ``version``."""
    db = home / "registry.db"
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{db}")
    try:
        upgrade(engine, target=version)
        assert current_version(engine) == version
    finally:
        engine.dispose()
    return db


def _tables(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]


def test_a_command_on_a_missing_sqlite_registry_creates_nothing(
    cli: Cli, initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "elsewhere" / "fleet.db"
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", f"sqlite:///{db}")
    result = cli("status")
    assert result.exit_code == 2
    assert "run `edgefleet init`" in result.stderr
    assert not db.exists() and not db.parent.exists()


def test_a_command_on_an_empty_sqlite_file_creates_no_table(
    cli: Cli, initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "fleet.db"
    db.touch()
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", f"sqlite:///{db}")
    for args in READERS:
        result = cli(*args)
        assert result.exit_code == 2, args
        assert f"the registry sqlite:///{db} is empty: run `edgefleet init`" in result.stderr
    assert _tables(db) == []
    cli.ok("init")
    assert "schema_version" in _tables(db)
    cli.ok("status")


@pytest.mark.postgres
def test_status_on_an_empty_postgres_database_creates_no_table(
    cli: Cli, initialised: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", postgres_url)
    engine = create_engine(postgres_url)
    try:
        for args in READERS:
            result = cli(*args)
            assert result.exit_code == 2, args
            assert "is empty: run `edgefleet init`" in result.stderr
        assert sa.inspect(engine).get_table_names() == []
        assert "migrated" in cli.ok("init").stdout
        assert "schema_version" in sa.inspect(engine).get_table_names()
        cli.ok("status")
    finally:
        engine.dispose()


@pytest.mark.parametrize("args", READERS, ids=[" ".join(a) for a in READERS])
def test_an_old_schema_is_refused_with_the_upgrade_hint(
    cli: Cli, initialised: Path, args: tuple[str, ...]
) -> None:
    old = SCHEMA_VERSION - 1
    db = _registry_at(initialised, old)
    before = sqlite_snapshot(db)
    result = cli(*args)
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: the registry is at schema {old}, this edgefleet needs {SCHEMA_VERSION}: "
        "run `edgefleet upgrade`\n"
    )
    assert sqlite_snapshot(db) == before


def test_upgrade_applies_the_missing_migrations_and_says_which(cli: Cli, initialised: Path) -> None:
    db = _registry_at(initialised, 1)
    report = json.loads(cli.ok("upgrade", "--json").stdout)
    assert (report["from_version"], report["to_version"]) == (1, SCHEMA_VERSION)
    assert report["applied"] == [
        {"version": m.version, "description": m.description} for m in MIGRATIONS[1:]
    ]
    assert [r[0] for r in sqlite_snapshot(db)["schema_version"]] == list(
        range(1, SCHEMA_VERSION + 1)
    )
    assert "nothing to do" in cli.ok("upgrade").stdout
    cli.ok("status")


def test_upgrade_in_words(cli: Cli, initialised: Path) -> None:
    _registry_at(initialised, SCHEMA_VERSION - 1)
    out = cli.ok("upgrade").stdout
    assert f"from schema {SCHEMA_VERSION - 1} to {SCHEMA_VERSION}:" in out
    assert f"{SCHEMA_VERSION}  {MIGRATIONS[-1].description[:30]}" in out


def test_init_still_migrates_an_old_registry(cli: Cli, initialised: Path) -> None:
    _registry_at(initialised, 2)
    assert "migrated" in cli.ok("init").stdout
    cli.ok("device", "list")


def test_a_newer_schema_is_refused(cli: Cli, initialised: Path) -> None:
    db = initialised / "registry.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO schema_version (version, description, applied_at) "
            "VALUES (?, 'from the future', '2030-01-01 00:00:00')",
            (SCHEMA_VERSION + 1,),
        )
    result = cli("device", "list")
    assert result.exit_code == 2
    assert "newer than this edgefleet understands" in result.stderr
    assert cli("upgrade").exit_code == 2
