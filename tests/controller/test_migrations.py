"""The schema is built by numbered migrations, and an old database upgrades in place."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from edgefleet.controller import (
    SCHEMA_VERSION,
    create_engine,
    current_version,
    upgrade,
)
from edgefleet.controller.registry import MIGRATIONS, Migration
from edgefleet.shared.errors import ConfigError


@pytest.fixture
def engine(database_url: str) -> sa.Engine:
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert SCHEMA_VERSION == MIGRATIONS[-1].version >= 2


def test_an_empty_database_upgrades_to_the_latest(engine: sa.Engine) -> None:
    assert current_version(engine) == 0
    assert upgrade(engine) == list(range(1, SCHEMA_VERSION + 1))
    assert current_version(engine) == SCHEMA_VERSION
    assert upgrade(engine) == []  # up to date: nothing to do


def test_the_migrated_schema_matches_the_models(engine: sa.Engine) -> None:
    upgrade(engine)
    inspector = sa.inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        assert inspector.has_table(table.name), table.name
        actual = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(actual) == set(table.columns.keys()), table.name
        for column in table.columns:
            if not column.primary_key:
                assert actual[column.name]["nullable"] == column.nullable, (
                    f"{table.name}.{column.name}"
                )
        declared_fks = {(fk.parent.name, fk.column.table.name) for fk in table.foreign_keys}
        actual_fks = {
            (fk["constrained_columns"][0], fk["referred_table"])
            for fk in inspector.get_foreign_keys(table.name)
        }
        assert actual_fks == declared_fks, table.name


def test_a_version_1_database_with_data_upgrades_in_place(engine: sa.Engine) -> None:
    assert upgrade(engine, target=1) == [1]
    assert current_version(engine) == 1
    assert not sa.inspect(engine).has_table("deployment")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO profile (name, description, arch, cores, ram_mb, spec, source,"
                " updated_at) VALUES ('rpi4', '', 'arm64', 4, 4096, :spec, '', :now)"
            ),
            {"spec": json.dumps({"name": "rpi4"}), "now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO device (name, profile, labels, token_sha256, mqtt_password_hash,"
                " created_at) VALUES ('pi-1', 'rpi4', :labels, :tok, '$7$x', :now)"
            ),
            {"labels": json.dumps({"site": "lab"}), "tok": "0" * 64, "now": now},
        )

    assert upgrade(engine) == list(range(2, SCHEMA_VERSION + 1))

    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT name, labels, last_sequence, online, agent_version FROM device")
        ).one()
        versions = conn.execute(sa.text("SELECT version FROM schema_version")).scalars().all()
    assert row.name == "pi-1"
    labels = row.labels if isinstance(row.labels, dict) else json.loads(row.labels)
    assert labels == {"site": "lab"}
    assert (row.last_sequence, bool(row.online), row.agent_version) == (0, False, "")
    assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
    for table in ("deployment", "event", "telemetry"):
        assert sa.inspect(engine).has_table(table)


def test_a_version_2_database_with_a_deployment_upgrades_in_place(engine: sa.Engine) -> None:
    """Schema 3 adds the stored command; rows sent before it keep everything else."""
    assert upgrade(engine, target=2) == [1, 2]
    now = datetime.now(UTC)
    statements = (
        "INSERT INTO profile (name, description, arch, cores, ram_mb, spec, source, updated_at)"
        " VALUES ('rpi4', '', 'arm64', 4, 4096, :spec, '', :now)",
        "INSERT INTO device (id, name, profile, labels, token_sha256, mqtt_password_hash,"
        " created_at, last_sequence) VALUES (1, 'pi-1', 'rpi4', :spec, :tok, '$7$x', :now, 1)",
        "INSERT INTO model (id, name, created_at) VALUES (1, 'digits', :now)",
        "INSERT INTO model_version (id, model_id, version, io, smoke_test, source_name,"
        " created_at) VALUES (1, 1, '1.0.0', :spec, :spec, 'd.onnx', :now)",
        "INSERT INTO artifact (sha256, size, path, format, created_at)"
        " VALUES (:tok, 10, 'sha256/00/x', 'onnx', :now)",
        "INSERT INTO variant (id, model_version_id, name, artifact_sha256, metrics, created_at)"
        " VALUES (1, 1, 'fp32', :tok, :spec, :now)",
        "INSERT INTO deployment (deployment_id, device_id, variant_id, sequence, state,"
        " created_at, updated_at) VALUES ('dep-1', 1, 1, 1, 'sent', :now, :now)",
    )
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(sa.text(sql), {"spec": "{}", "tok": "0" * 64, "now": now})

    assert upgrade(engine) == list(range(3, SCHEMA_VERSION + 1))

    deployment = sa.table(
        "deployment", sa.column("deployment_id"), sa.column("sequence"), sa.column("state"),
        sa.column("payload", sa.LargeBinary),
    )  # fmt: skip
    with engine.begin() as conn:
        row = conn.execute(sa.select(deployment)).one()
        assert tuple(row) == ("dep-1", 1, "sent", None)  # sent before schema 3: nothing stored
        conn.execute(sa.update(deployment).values(payload=b"\x00{cmd}\xff"))
        assert conn.execute(sa.select(deployment.c.payload)).scalar() == b"\x00{cmd}\xff"
        assert conn.execute(sa.text("SELECT name FROM device")).scalar() == "pi-1"


def test_a_database_newer_than_the_code_is_refused(engine: sa.Engine) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO schema_version (version, description, applied_at)"
                " VALUES (:v, 'from the future', :now)"
            ),
            {"v": SCHEMA_VERSION + 1, "now": datetime.now(UTC)},
        )
    with pytest.raises(ConfigError, match="newer than this edgefleet"):
        upgrade(engine)


def test_a_failing_migration_leaves_no_trace(engine: sa.Engine) -> None:
    upgrade(engine, target=1)

    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE half_done (id INTEGER PRIMARY KEY)"))
        raise sa.exc.OperationalError("boom", {}, Exception("disk on fire"))

    failing = (MIGRATIONS[0], Migration(2, "broken", broken))
    with pytest.raises(Exception, match="disk on fire"):
        upgrade(engine, migrations=failing)
    assert current_version(engine) == 1
    assert not sa.inspect(engine).has_table("half_done")  # DDL rolled back too


def test_sqlite_pragmas(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    engine.dispose()


def test_commands_starting_at_once_migrate_once(database_url: str) -> None:
    import threading

    errors: list[BaseException] = []
    applied: list[list[int]] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        engine = create_engine(database_url)
        try:
            barrier.wait()
            applied.append(upgrade(engine))
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(v for versions in applied for v in versions) == list(range(1, SCHEMA_VERSION + 1))
