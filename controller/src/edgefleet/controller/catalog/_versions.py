"""The model catalog: models, their versions, and each version's deployable variants."""

from __future__ import annotations

import re
from pathlib import Path

from sqlmodel import Session, col, select

from edgefleet.shared import IOSignature, SmokeTest
from edgefleet.shared.errors import AlreadyExists, ConfigError, Conflict, NotFound

from ..home import Home
from ..registry import (
    Artifact,
    Model,
    ModelVersion,
    ModelVersionPublic,
    Variant,
    VariantPublic,
    as_utc,
)
from ._onnx import inspect_model

ORIGINAL_VARIANT = "fp32"  # the file as added; compressed variants get other names
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")


def parse_model_ref(ref: str) -> tuple[str, str]:
    """``"digits:1.0.0"`` → ``("digits", "1.0.0")``."""
    name, sep, version = ref.partition(":")
    if not sep or not name or not version:
        raise ConfigError(f"model reference {ref!r} must look like NAME:VERSION")
    return name, version


def check_name_and_version(name: str, version: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-'")
    if not _VERSION.fullmatch(version):
        raise ConfigError(f"invalid version {version!r}: use letters, digits, '.', '+', '_' or '-'")


def add_model(
    home: Home, path: Path, *, name: str, version: str, sample: Path | None = None
) -> ModelVersionPublic:
    """Check the file loads in ONNX Runtime, store it, and record the version with its
    signature and smoke test. Refuses an existing name:version before touching anything."""
    check_name_and_version(name, version)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    with home.session() as session:
        _refuse_duplicate(session, name, version)
    inspected = inspect_model(path, sample)
    stored = home.store.put_file(path)
    try:
        with home.session(write=True) as session:
            _refuse_duplicate(session, name, version)
            model = session.exec(select(Model).where(Model.name == name)).first()
            if model is None:
                model = Model(name=name)
                session.add(model)
                session.flush()
            if session.get(Artifact, stored.sha256) is None:
                session.add(Artifact(sha256=stored.sha256, size=stored.size, path=stored.path))
            row = ModelVersion(
                model_id=model.id,  # type: ignore[arg-type]
                version=version,
                io=inspected.io.model_dump(mode="json"),
                smoke_test=inspected.smoke_test.model_dump(mode="json"),
                source_name=path.name,
            )
            session.add(row)
            session.flush()
            session.add(
                Variant(
                    model_version_id=row.id,  # type: ignore[arg-type]
                    name=ORIGINAL_VARIANT,
                    artifact_sha256=stored.sha256,
                    metrics={},
                )
            )
            session.flush()
            return _public(session, model, row)
    except Conflict as exc:  # someone added the same version meanwhile
        raise AlreadyExists(f"model {name}:{version} already exists") from exc


def find_version(session: Session, name: str, version: str) -> ModelVersion:
    """The registry row of model version ``name:version``; NotFound if there is none."""
    row = session.exec(
        select(ModelVersion)
        .join(Model, Model.id == ModelVersion.model_id)  # type: ignore[arg-type]
        .where(Model.name == name, ModelVersion.version == version)
    ).first()
    if row is None:
        raise NotFound(f"unknown model {name}:{version}")
    return row


def _refuse_duplicate(session: Session, name: str, version: str) -> None:
    existing = session.exec(
        select(ModelVersion.id)
        .join(Model, Model.id == ModelVersion.model_id)  # type: ignore[arg-type]
        .where(Model.name == name, ModelVersion.version == version)
    ).first()
    if existing is not None:
        raise AlreadyExists(f"model {name}:{version} already exists")


def list_models(home: Home, *, name: str | None = None) -> list[ModelVersionPublic]:
    with home.session() as session:
        query = (
            select(Model, ModelVersion)
            .join(ModelVersion, ModelVersion.model_id == Model.id)  # type: ignore[arg-type]
            .order_by(col(Model.name), col(ModelVersion.created_at), col(ModelVersion.id))
        )
        if name is not None:
            query = query.where(Model.name == name)
        return [_public(session, m, v) for m, v in session.exec(query).all()]


def get_model_version(home: Home, ref: str) -> ModelVersionPublic:
    name, version = parse_model_ref(ref)
    with home.session() as session:
        found = session.exec(
            select(Model, ModelVersion)
            .join(ModelVersion, ModelVersion.model_id == Model.id)  # type: ignore[arg-type]
            .where(Model.name == name, ModelVersion.version == version)
        ).first()
        if found is None:
            raise NotFound(f"unknown model {name}:{version}")
        return _public(session, *found)


def _public(session: Session, model: Model, row: ModelVersion) -> ModelVersionPublic:
    variants = session.exec(
        select(Variant, Artifact)
        .join(Artifact, Artifact.sha256 == Variant.artifact_sha256)  # type: ignore[arg-type]
        .where(Variant.model_version_id == row.id)
        .order_by(col(Variant.id))
    ).all()
    return ModelVersionPublic(
        name=model.name,
        version=row.version,
        created_at=as_utc(row.created_at),  # type: ignore[arg-type]
        source_name=row.source_name,
        io=IOSignature.model_validate(row.io),
        smoke_test=SmokeTest.model_validate(row.smoke_test),
        variants=[
            VariantPublic(
                name=v.name,
                sha256=a.sha256,
                size=a.size,
                profile=v.profile,
                metrics=dict(v.metrics or {}),
            )
            for v, a in variants
        ],
    )
