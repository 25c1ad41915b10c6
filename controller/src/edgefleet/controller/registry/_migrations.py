"""Numbered schema migrations and the ``schema_version`` table that records them.

Each migration spells out its own DDL (it is history and must not follow later
edits of ``_models``), runs in one transaction with the row that records it,
and holds a write lock so two commands starting at once cannot both apply it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.shared.errors import ConfigError, RegistryError

from ._engine import describe_error, write_lock


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sa.Connection], None]


def _when(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _v1(conn: sa.Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "profile",
        md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("description", sa.String, nullable=False),
        sa.Column("arch", sa.String(32), nullable=False),
        sa.Column("cores", sa.Integer, nullable=False),
        sa.Column("ram_mb", sa.Integer, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("source", sa.String, nullable=False),
        _when("updated_at"),
    )
    sa.Table(
        "device",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("profile", sa.String(64), sa.ForeignKey("profile.name"), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("mqtt_password_hash", sa.String(200), nullable=False),
        _when("created_at"),
    )
    sa.Table(
        "model",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        _when("created_at"),
    )
    sa.Table(
        "model_version",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "model_id", sa.Integer, sa.ForeignKey("model.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("io", sa.JSON, nullable=False),
        sa.Column("smoke_test", sa.JSON, nullable=False),
        sa.Column("source_name", sa.String, nullable=False),
        _when("created_at"),
        sa.UniqueConstraint("model_id", "version"),
    )
    sa.Table(
        "artifact",
        md,
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        _when("created_at"),
    )
    sa.Table(
        "variant",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "model_version_id",
            sa.Integer,
            sa.ForeignKey("model_version.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("artifact_sha256", sa.String, sa.ForeignKey("artifact.sha256"), nullable=False),
        sa.Column("profile", sa.String, sa.ForeignKey("profile.name"), nullable=True),
        sa.Column("metrics", sa.JSON, nullable=False),
        _when("created_at"),
        sa.UniqueConstraint("model_version_id", "name"),
    )
    md.create_all(conn)


def _v2(conn: sa.Connection) -> None:
    """Deployments, events and telemetry; the device's last reported status."""
    for column in (
        sa.Column("last_sequence", sa.Integer, nullable=False, server_default="0"),
        sa.Column("online", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("agent_version", sa.String, nullable=False, server_default=""),
    ):
        _add_column(conn, "device", column)
    md = sa.MetaData()
    sa.Table("device", md, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table("variant", md, sa.Column("id", sa.Integer, primary_key=True))
    device_fk = sa.ForeignKey("device.id", ondelete="CASCADE")
    sa.Table(
        "deployment",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("deployment_id", sa.String(128), nullable=False, index=True),
        sa.Column("device_id", sa.Integer, device_fk, nullable=False),
        sa.Column("variant_id", sa.Integer, sa.ForeignKey("variant.id"), nullable=False),
        sa.Column("sequence", sa.Integer, nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("error_code", sa.String, nullable=True),
        sa.Column("error_message", sa.String, nullable=True),
        _when("created_at"),
        _when("updated_at"),
        sa.UniqueConstraint("deployment_id", "device_id"),
    )
    sa.Table(
        "event",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "device_id",
            sa.Integer,
            sa.ForeignKey("device.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("deployment_id", sa.String(128), nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("error_code", sa.String, nullable=True),
        sa.Column("message", sa.String, nullable=False),
        sa.Column("details", sa.JSON, nullable=True),
        _when("at"),
        _when("received_at"),
    )
    sa.Table(
        "telemetry",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "device_id", sa.Integer, sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False
        ),
        _when("at"),
        sa.Column("interval_s", sa.Float, nullable=False),
        sa.Column("model", sa.String, nullable=True),
        sa.Column("deployment_id", sa.String, nullable=True),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("latency_counts", sa.JSON, nullable=True),
        sa.Column("p50_ms", sa.Float, nullable=True),
        sa.Column("p95_ms", sa.Float, nullable=True),
        sa.Column("p99_ms", sa.Float, nullable=True),
        sa.Column("cpu_percent", sa.Float, nullable=True),
        sa.Column("memory_used_bytes", sa.BigInteger, nullable=True),
        sa.Column("temperature_c", sa.Float, nullable=True),
        sa.Column("disk_free_bytes", sa.BigInteger, nullable=True),
        sa.Index("ix_telemetry_device_at", "device_id", "at"),
    )
    for name in ("deployment", "event", "telemetry"):
        md.tables[name].create(conn)


def _v3(conn: sa.Connection) -> None:
    """The exact command published for a deployment row, so it can be sent again."""
    _add_column(conn, "deployment", sa.Column("payload", sa.LargeBinary, nullable=True))


def _v4(conn: sa.Connection) -> None:
    """A variant's own smoke test (a compressed file does not give the fp32 outputs)."""
    _add_column(conn, "variant", sa.Column("smoke_test", sa.JSON, nullable=True))


def _v5(conn: sa.Connection) -> None:
    """Artifacts a device may read besides its deployments' (benchmark candidates), until when."""
    md = sa.MetaData()
    sa.Table("device", md, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "artifact_grant",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "device_id", sa.Integer, sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False
        ),
        # no foreign key: benchmark candidates are in the store without an artifact row
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        _when("expires_at"),
        _when("created_at"),
        sa.Index("ix_artifact_grant_device_sha", "device_id", "artifact_sha256"),
    )
    md.tables["artifact_grant"].create(conn)


def _v6(conn: sa.Connection) -> None:
    """Signing keys (the private parts stay in files) and the trust updates sent to devices."""
    md = sa.MetaData()
    sa.Table("device", md, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "signing_key",
        md,
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _when("created_at"),
        _when("retired_at", nullable=True),
    )
    sa.Table(
        "trust_update",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("update_id", sa.String(128), nullable=False, unique=True),
        sa.Column(
            "device_id", sa.Integer, sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("rotation", sa.String(16), nullable=False),
        sa.Column("signer_key_id", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=True),
        sa.Column("error_code", sa.String, nullable=True),
        sa.Column("error_message", sa.String, nullable=True),
        _when("created_at"),
        _when("updated_at"),
        sa.UniqueConstraint("device_id", "version"),
    )
    md.tables["signing_key"].create(conn)
    md.tables["trust_update"].create(conn)


def _add_column(conn: sa.Connection, table: str, column: sa.Column) -> None:
    ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {ddl}"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "profiles, devices, models, versions, artifacts, variants", _v1),
    Migration(2, "deployments, events, telemetry, device status", _v2),
    Migration(3, "the command sent for each deployment row, kept for resending", _v3),
    Migration(4, "a smoke test of its own for each compressed variant", _v4),
    Migration(5, "artifact grants: what a device may read besides its deployments", _v5),
    Migration(6, "signing keys and the trust updates that rotate them on devices", _v6),
)
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
