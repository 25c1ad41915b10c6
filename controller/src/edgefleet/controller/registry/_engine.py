"""Engines and sessions for the registry: SQLite (WAL) by default, any SQLAlchemy URL otherwise.

There is no module-level engine: callers build one with :func:`create_engine`
and pass it on.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlmodel import Session

from edgefleet.shared.errors import ConfigError, Conflict, RegistryError

BUSY_TIMEOUT_MS = 30_000


def create_engine(url: str, **kwargs: Any) -> Engine:
    """Build an engine; for SQLite turn on WAL, foreign keys, a busy timeout and real
    transactions (pysqlite otherwise runs DDL outside any transaction)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database_url {url!r} is not a SQLAlchemy URL") from exc
    # SQLAlchemy 2.1 defaults to psycopg 3; use psycopg2 when that is what is installed.
    if (
        parsed.drivername == "postgresql"
        and not importlib.util.find_spec("psycopg")
        and importlib.util.find_spec("psycopg2")
    ):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database and parsed.database != ":memory:":
        from pathlib import Path

        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"no database driver for {parsed.drivername!r}: {exc}") from exc
    if is_sqlite:
        _tune_sqlite(engine, in_memory=parsed.database in (None, "", ":memory:"))
    return engine


def _tune_sqlite(engine: Engine, *, in_memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # first: the next pragmas may wait
        if not in_memory:
            _enable_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")  # durable across crashes in WAL mode
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # IMMEDIATE takes the write lock up front, so two writers queue on the busy
        # timeout instead of one failing when it upgrades a read lock.
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def _enable_wal(cur: Any) -> None:
    """Switch to WAL once (the mode is stored in the file). The switch needs an exclusive
    lock and SQLite answers "database is locked" at once, without the busy handler, when
    several connections open a new file together; so retry within the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def write_lock(conn: sa.Connection) -> None:
    """Serialise schema changes across processes for the current transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7310942)"))
    # SQLite: the transaction was opened with BEGIN IMMEDIATE (see migrations)


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """A session that commits on success, rolls back on error, and turns SQLAlchemy's
    errors into edgefleet's: a broken constraint into :class:`Conflict` (callers that know
    which constraint it was say so), other trouble into :class:`RegistryError`.

    ``write=True`` takes SQLite's write lock when the transaction begins: a transaction
    that reads and then writes while another process commits would otherwise fail at
    once with "database is locked" instead of waiting on the busy timeout.
    """
    bind = engine.execution_options(sqlite_begin="IMMEDIATE") if write else engine
    session = Session(bind, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except sa.exc.IntegrityError as exc:
        session.rollback()
        raise Conflict(f"the registry refused a conflicting write: {describe_error(exc)}") from exc
    except SQLAlchemyError as exc:
        session.rollback()
        raise RegistryError(f"database error: {describe_error(exc)}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def describe_url(url: str) -> str:
    """The URL without its password, for messages and `init` output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid url>"


def describe_error(exc: SQLAlchemyError) -> str:
    """The driver's own first line, without SQLAlchemy's wrapping and links."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else cause.__class__.__name__
