"""Controller fixtures: a home folder in tmp_path, real SQLite files, PostgreSQL when asked."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from edgefleet.controller import Home, init_home, load_settings, open_home
from edgefleet.controller.cli import app
from edgefleet.controller.registry import create_engine
from edgefleet.harness import ControllerFleet, digits, write_digits_model

POSTGRES_ENV = "EDGEFLEET_TEST_POSTGRES_URL"


@pytest.fixture
def home_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("EDGEFLEET_HOME", str(home))
    for var in ("EDGEFLEET_DATABASE_URL", "EDGEFLEET_BROKER_URL", "EDGEFLEET_ARTIFACT_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


class Cli:
    """Runs ``edgefleet`` in-process against the test's home folder."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(app, list(args), input=input, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, result.output
        return result


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ControllerFleet]:
    """The real controller on this machine in ``tmp_path`` (its broker, home, and the daemon
    and agents a test starts), stopped afterwards. A module whose fleet is something else
    defines a ``fleet`` of its own."""
    f = ControllerFleet(tmp_path)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def cli(home_dir: Path) -> Cli:
    return Cli()


@pytest.fixture
def initialised(cli: Cli, home_dir: Path) -> Path:
    cli.ok("init")
    return home_dir


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_model(tmp_path_factory.mktemp("models") / "digits-v1.onnx", seed=0)


@pytest.fixture(scope="session")
def model_file_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_model(tmp_path_factory.mktemp("models") / "digits-v2.onnx", seed=1)


@pytest.fixture(scope="session")
def sample_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = digits()
    path = tmp_path_factory.mktemp("data") / "eval.npz"
    np.savez(path, x=x[:32].astype(np.float64), y=y[:32])  # float64: add must cast
    return path


def sqlite_snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read with the sqlite3 module rather than our own code."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"'), key=repr) for t in sorted(tables)}


# SQLite's write-ahead log and shared-memory index come and go with connections (the last
# one to close removes them, whenever the garbage collector gets to it); the rows they hold
# are compared by sqlite_snapshot
_SQLITE_SIDE_FILES = ("-wal", "-shm")


def files_under(root: Path) -> list[str]:
    """The files below ``root``, SQLite's transient side files left out."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(_SQLITE_SIDE_FILES)
    )


# -- the registry on SQLite and, when configured, PostgreSQL -----------------------


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the test PostgreSQL, dropped afterwards."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"set {POSTGRES_ENV} to run the PostgreSQL tests")
    schema = f"ef_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def home(home_dir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """An initialised home whose registry lives at ``database_url``."""
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", database_url)
    settings = load_settings(home_dir)
    init_home(settings)
    opened = open_home(settings)
    yield opened
    opened.close()
