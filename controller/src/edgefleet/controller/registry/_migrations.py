"""Numbered schema migrations and the ``schema_version`` table that records them.

Each migration spells out its own DDL (it is history and must not follow later
edits of ``_tables``; see ``_history``), runs in one transaction with the row that records it,
and holds a write lock so two commands starting at once cannot both apply it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.shared.errors import ConfigError, RegistryError

from ._engine import describe_error, write_lock
from ._history import MIGRATIONS, Migration

LATEST = MIGRATIONS[-1].version

_VERSIONS = sa.Table(
    "schema_version",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.String, nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def current_version(engine: Engine) -> int:
    """The highest applied migration; 0 for an empty database."""
    try:
        with engine.connect() as conn:
            return _read_version(conn)
    except SQLAlchemyError as exc:
        raise RegistryError(
            f"cannot open the database {_where(engine)}: {describe_error(exc)}"
        ) from exc


def _read_version(conn: sa.Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(sa.select(sa.func.max(_VERSIONS.c.version))).scalar() or 0


def upgrade(
    engine: Engine, target: int | None = None, *, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Apply the migrations above the database's version, up to ``target`` (default: all).

    Returns the versions applied; an up-to-date database costs one query.
    """
    target = LATEST if target is None else target
    applied: list[int] = []
    try:
        with engine.connect() as conn:
            version = _read_version(conn)
        if version > LATEST:
            raise ConfigError(
                f"the database is at schema version {version}, newer than this edgefleet "
                f"understands ({LATEST}); upgrade edgefleet-controller"
            )
        if version >= target:
            return applied
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
            write_lock(conn)
            _VERSIONS.create(conn, checkfirst=True)
        for migration in migrations:
            if migration.version > target:
                break
            with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
                write_lock(conn)
                if _read_version(conn) >= migration.version:
                    continue  # another process got there first
                migration.apply(conn)
                conn.execute(
                    _VERSIONS.insert().values(
                        version=migration.version,
                        description=migration.description,
                        applied_at=datetime.now(UTC),
                    )
                )
                applied.append(migration.version)
    except SQLAlchemyError as exc:
        raise RegistryError(
            f"cannot bring the database {_where(engine)} up to date: {describe_error(exc)}"
        ) from exc
    return applied


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
