"""Device profiles: data files describing a class of device and what may be done for it.

Built-in profiles come with edgefleet (``deploy/profiles/*.toml``); files in
``$EDGEFLEET_HOME/profiles/`` add to them and replace ones of the same name.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session

from edgefleet.shared import RuntimeSettings
from edgefleet.shared.errors import ConfigError, NotFound

from ..registry import Profile, utcnow

CompressionPass = Literal[
    "prune",
    "distill",
    "graph_opt",
    "transformer_fusion",
    "int8_dynamic",
    "int8_static",
    "int8_sensitive",
    "int4_weight",
    "fp16",
]


class Budgets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_size_bytes: int = Field(gt=0)
    max_latency_ms: float = Field(gt=0)
    max_accuracy_drop: float = Field(ge=0, le=1)
    # the drop of the worst evaluation row (cosine, mse), when set: a mean hides one badly
    # wrong embedding
    max_worst_drop: float | None = Field(default=None, ge=0, le=1)


class Compression(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    passes: list[CompressionPass] = Field(default_factory=list)
    # what `edgefleet compress` optimises among the candidates inside the budgets
    objective: Literal["latency", "size"] = "latency"
    # int4_weight: one candidate per block size and per symmetric/asymmetric choice
    int4_block_sizes: list[Literal[16, 32, 64, 128, 256]] = Field(
        default_factory=lambda: [32, 128]  # type: ignore[arg-type]
    )
    int4_symmetric: list[bool] = Field(default_factory=lambda: [True, False])
    # int8_sensitive: at most this many of the most harmful nodes are kept in float
    max_kept_float: int = Field(default=8, ge=1)
    # and their weights: "int8" stores them block-wise (MatMulNBits, arithmetic still
    # float, next to no size), "float" keeps them fp32
    kept_float_weights: Literal["int8", "float"] = "int8"


class DeviceProfile(BaseModel):
    """One ``profiles/*.toml`` file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    description: str = ""
    arch: Literal["arm64", "armv7", "x86_64"]
    isa_features: list[str] = Field(default_factory=list)
    cores: int = Field(ge=1)
    ram_mb: int = Field(ge=1)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    budgets: Budgets
    compression: Compression = Field(default_factory=Compression)
    source: str = Field(default="", exclude=True)  # the file it came from


def builtin_profiles_dir() -> Path | None:
    """The profiles shipped with edgefleet: package data in a wheel, ``deploy/profiles``
    in a source checkout (an editable install has no package data)."""
    packaged = Path(str(resources.files("edgefleet.controller"))) / "profiles"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[5] / "deploy" / "profiles"
    return checkout if checkout.is_dir() else None


def load_profile(path: Path) -> DeviceProfile:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read profile {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile {path} is not valid TOML: {exc}") from exc
    data.setdefault("name", path.stem)
    try:
        profile = DeviceProfile.model_validate({**data, "source": str(path)})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"profile {path}: {where}: {err['msg']}") from exc
    if profile.name != path.stem:
        raise ConfigError(f"profile {path} is named {profile.name!r}; name the file after it")
    return profile


def load_profiles(dirs: Iterable[Path | None]) -> dict[str, DeviceProfile]:
    """All profiles in ``dirs``, later folders replacing earlier ones by name, sorted."""
    found: dict[str, DeviceProfile] = {}
    for folder in dirs:
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            profile = load_profile(path)
            found[profile.name] = profile
    return dict(sorted(found.items()))


def get_profile(profiles: dict[str, DeviceProfile], name: str) -> DeviceProfile:
    try:
        return profiles[name]
    except KeyError:
        known = ", ".join(profiles) or "none"
        raise NotFound(f"unknown profile {name!r} (known: {known})") from None


def record_profile(session: Session, profile: DeviceProfile) -> None:
    """Keep the registry's copy of a profile in step with its file."""
    row = session.get(Profile, profile.name) or Profile(
        name=profile.name, arch=profile.arch, cores=profile.cores, ram_mb=profile.ram_mb
    )
    row.description = profile.description
    row.arch = profile.arch
    row.cores = profile.cores
    row.ram_mb = profile.ram_mb
    row.spec = profile.model_dump(mode="json")
    row.source = profile.source
    row.updated_at = utcnow()
    session.add(row)
