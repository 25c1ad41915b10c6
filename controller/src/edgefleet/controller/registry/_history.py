"""The schema's history: each migration spells out its own DDL (it is history and must not
follow later edits of ``_tables``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sa.Connection], None]


def column_when(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def schema_v1(conn: sa.Connection) -> None:
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
        column_when("updated_at"),
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
        column_when("created_at"),
    )
    sa.Table(
        "model",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        column_when("created_at"),
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
        column_when("created_at"),
        sa.UniqueConstraint("model_id", "version"),
    )
    sa.Table(
        "artifact",
        md,
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        column_when("created_at"),
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
        column_when("created_at"),
        sa.UniqueConstraint("model_version_id", "name"),
    )
    md.create_all(conn)


def schema_v2(conn: sa.Connection) -> None:
    """Deployments, events and telemetry; the device's last reported status."""
    for column in (
        sa.Column("last_sequence", sa.Integer, nullable=False, server_default="0"),
        sa.Column("online", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("agent_version", sa.String, nullable=False, server_default=""),
    ):
        add_column(conn, "device", column)
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
        column_when("created_at"),
        column_when("updated_at"),
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
        column_when("at"),
        column_when("received_at"),
    )
    sa.Table(
        "telemetry",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "device_id", sa.Integer, sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False
        ),
        column_when("at"),
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


def schema_v3(conn: sa.Connection) -> None:
    """The exact command published for a deployment row, so it can be sent again."""
    add_column(conn, "deployment", sa.Column("payload", sa.LargeBinary, nullable=True))


def schema_v4(conn: sa.Connection) -> None:
    """A variant's own smoke test (a compressed file does not give the fp32 outputs)."""
    add_column(conn, "variant", sa.Column("smoke_test", sa.JSON, nullable=True))


def schema_v5(conn: sa.Connection) -> None:
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
        column_when("expires_at"),
        column_when("created_at"),
        sa.Index("ix_artifact_grant_device_sha", "device_id", "artifact_sha256"),
    )
    md.tables["artifact_grant"].create(conn)


def schema_v6(conn: sa.Connection) -> None:
    """Signing keys (the private parts stay in files) and the trust updates sent to devices."""
    md = sa.MetaData()
    sa.Table("device", md, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "signing_key",
        md,
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        column_when("created_at"),
        column_when("retired_at", nullable=True),
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
        column_when("created_at"),
        column_when("updated_at"),
        sa.UniqueConstraint("device_id", "version"),
    )
    md.tables["signing_key"].create(conn)
    md.tables["trust_update"].create(conn)


def schema_v7(conn: sa.Connection) -> None:
    """Rollouts: waves, gate evaluations, each deployment row's rollout and wave, rollback
    rows, and what each device last said it serves."""
    md = sa.MetaData()
    sa.Table("model_version", md, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "rollout",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("rollout_id", sa.String(128), nullable=False, unique=True),
        sa.Column(
            "model_version_id", sa.Integer, sa.ForeignKey("model_version.id"), nullable=False
        ),
        sa.Column("selector", sa.JSON, nullable=False),
        sa.Column("plan", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("current_wave", sa.Integer, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("reason", sa.String, nullable=False),
        sa.Column("started_by", sa.String(64), nullable=False),
        sa.Column("note", sa.String, nullable=False),
        column_when("created_at"),
        column_when("updated_at"),
    )
    sa.Table(
        "rollout_wave",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "rollout_id",
            sa.Integer,
            sa.ForeignKey("rollout.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("planned", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("devices", sa.JSON, nullable=False),
        sa.Column("queued", sa.JSON, nullable=False),
        column_when("started_at", nullable=True),
        column_when("bake_started_at", nullable=True),
        column_when("analysed_at", nullable=True),
        column_when("decided_at", nullable=True),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.UniqueConstraint("rollout_id", "number"),
    )
    sa.Table(
        "gate_evaluation",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "rollout_id",
            sa.Integer,
            sa.ForeignKey("rollout.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("gate", sa.String(32), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("statistic", sa.Float, nullable=True),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("detail", sa.String, nullable=False),
        column_when("at"),
    )
    for name in ("rollout", "rollout_wave", "gate_evaluation"):
        md.tables[name].create(conn)
    for column in (
        sa.Column("rollout_id", sa.Integer, nullable=True),
        sa.Column("wave", sa.Integer, nullable=True),
        sa.Column("kind", sa.String(16), nullable=False, server_default="deploy"),
        sa.Column("undoes", sa.String(128), nullable=True),
        column_when("sent_at", nullable=True),
        column_when("committed_at", nullable=True),
        sa.Column("command_sha256", sa.String(64), nullable=True),
    ):
        add_column(conn, "deployment", column)
    for column in (
        sa.Column("serving_deployment_id", sa.String(128), nullable=True),
        sa.Column("serving_model", sa.String(256), nullable=True),
        sa.Column("previous_deployment_id", sa.String(128), nullable=True),
        column_when("status_at", nullable=True),
    ):
        add_column(conn, "device", column)
    conn.execute(sa.text("CREATE INDEX ix_deployment_device_id ON deployment (device_id)"))
    conn.execute(sa.text("CREATE INDEX ix_deployment_rollout_id ON deployment (rollout_id)"))
    conn.execute(
        sa.text(
            "CREATE INDEX ix_telemetry_device_deployment"
            " ON telemetry (device_id, deployment_id, at)"
        )
    )


def add_column(conn: sa.Connection, table: str, column: sa.Column) -> None:
    ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {ddl}"))


def schema_v8(conn: sa.Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "daemon_heartbeat",
        md,
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("every_s", sa.Float, nullable=False),
        column_when("started_at"),
        column_when("beat_at"),
        column_when("stopped_at", nullable=True),
        sa.Column("broker_connected", sa.Boolean, nullable=False),
        sa.Column("detail", sa.String, nullable=False),
    )
    md.tables["daemon_heartbeat"].create(conn)


def schema_v9(conn: sa.Connection) -> None:
    for column in (
        sa.Column("status_deployment_id", sa.String(128), nullable=True),
        sa.Column("status_state", sa.String(32), nullable=True),
        sa.Column("status_sequence", sa.Integer, nullable=False, server_default="0"),
        column_when("status_received_at", nullable=True),
        sa.Column("p95_ms", sa.Float, nullable=True),
        column_when("p95_at", nullable=True),
    ):
        add_column(conn, "device", column)
    for column in (
        column_when("pinged_at", nullable=True),
        sa.Column("resends", sa.Integer, nullable=False, server_default="0"),
    ):
        add_column(conn, "deployment", column)
    # dispatch, reconciliation and every new rollout look rows up by state: the unfinished
    # ones are few, whatever the history kept
    conn.execute(sa.text("CREATE INDEX ix_deployment_state ON deployment (state)"))
    # ingest finds the events a batch may repeat by device and time, whatever the history
    conn.execute(sa.text("CREATE INDEX ix_event_device_at ON event (device_id, at)"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "profiles, devices, models, versions, artifacts, variants", schema_v1),
    Migration(2, "deployments, events, telemetry, device status", schema_v2),
    Migration(3, "the command sent for each deployment row, kept for resending", schema_v3),
    Migration(4, "a smoke test of its own for each compressed variant", schema_v4),
    Migration(5, "artifact grants: what a device may read besides its deployments", schema_v5),
    Migration(6, "signing keys and the trust updates that rotate them on devices", schema_v6),
    Migration(
        7, "rollouts, their waves and gate evaluations; rollback rows; serving models", schema_v7
    ),
    Migration(8, "the daemon's heartbeat, so commands can tell whether it is alive", schema_v8),
    Migration(
        9, "what each device's status says it works on (reconciliation); its newest p95", schema_v9
    ),
)
