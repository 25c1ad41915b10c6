"""The operator's edgefleet home: creating it (``init``) and opening it for every other command."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlmodel import Session, select

from edgefleet.shared import (
    generate_private_key,
    key_id,
    public_key_to_text,
)
from edgefleet.shared.errors import ConfigError

from ..registry import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ArtifactStore,
    KeyState,
    SigningKey,
    create_engine,
    current_version,
    describe_url,
    session_scope,
    upgrade,
)
from ._files import write_private
from ._keys import key_path, read_key, write_new_key
from ._profiles import DeviceProfile, builtin_profiles_dir, get_profile, load_profiles
from ._settings import Settings, config_text, with_controller_login
from ._tls import TlsFiles, existing_tls


@dataclass
class Home:
    """An opened home: settings, the registry's engine and the artifact store."""

    settings: Settings
    engine: Engine
    store: ArtifactStore
    migrations_applied: list[int] = field(default_factory=list)
    _profiles: dict[str, DeviceProfile] | None = field(default=None, repr=False)

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        with session_scope(self.engine, write=write) as session:
            yield session

    def profiles(self) -> dict[str, DeviceProfile]:
        if self._profiles is None:
            self._profiles = available_profiles(self.settings)
        return self._profiles

    def profile(self, name: str) -> DeviceProfile:
        return get_profile(self.profiles(), name)

    def signing_key(self) -> Ed25519PrivateKey:
        """The key new manifests and orders are signed with: the registry's current key once
        a rotation has registered one, else the key `init` made (controller.key)."""
        with self.session() as session:
            current = session.exec(
                select(SigningKey.key_id).where(SigningKey.state == KeyState.CURRENT.value)
            ).first()
        if current is None:
            return read_key(self.settings.private_key_path)
        return read_key(key_path(self.settings, current), current)

    def public_key_text(self) -> str:
        return public_key_to_text(self.signing_key().public_key())

    def trusted_key_texts(self) -> list[str]:
        """The public keys a newly enrolled device trusts: the current one and, while a
        rotation runs, the next one too."""
        with self.session() as session:
            rows = session.exec(
                select(SigningKey).where(
                    SigningKey.state.in_([KeyState.CURRENT.value, KeyState.NEXT.value])  # type: ignore[attr-defined]
                )
            ).all()
            keys = sorted(rows, key=lambda r: r.state != KeyState.CURRENT.value)
            texts = [r.public_key for r in keys]
        return texts or [self.public_key_text()]

    def tls(self) -> TlsFiles | None:
        """The home's CA and server certificate (``edgefleet tls init``), if it has them."""
        return existing_tls(self.settings.home)

    def tls_ca(self) -> str | None:
        """The CA's PEM that devices and the controller's clients trust, if there is one."""
        tls = self.tls()
        return tls.ca_pem() if tls else None

    def close(self) -> None:
        self.engine.dispose()


@dataclass(frozen=True)
class InitReport:
    home: Path
    database: str
    key_id: str
    created: list[str]
    migrations_applied: list[int]


def available_profiles(settings: Settings) -> dict[str, DeviceProfile]:
    return load_profiles([builtin_profiles_dir(), settings.profiles_dir])


def init_home(settings: Settings) -> InitReport:
    """Create what is missing: folders, config, key pair, database. Never replaces a key."""
    created: list[str] = []
    home = settings.home
    try:
        for folder in (home, settings.artifacts_dir, settings.profiles_dir):
            if not folder.is_dir():
                folder.mkdir(mode=0o700, parents=True)
                created.append(f"{folder}/")
        # the registry, the key and config.toml are nobody else's business; an older
        # edgefleet made the home with the umask's mode, so set it every time
        home.chmod(0o700)
        _private_database(settings.database_url, fix=True)
        keys = settings.private_key_path.parent
        if not keys.is_dir():
            keys.mkdir(mode=0o700, parents=True)
        if not settings.config_path.exists():
            # the broker login is made here, so the documented setup is never anonymous
            text = config_text(with_controller_login(settings))
            write_private(settings.config_path, text)
            created.append(str(settings.config_path))
        if not settings.private_key_path.exists():
            write_new_key(settings.private_key_path, generate_private_key())
            created.append(str(settings.private_key_path))
    except OSError as exc:
        raise ConfigError(f"cannot set up {home}: {exc}") from exc
    opened = open_home(settings, require_init=False, migrate=True)
    try:
        key = opened.signing_key()
        public = settings.public_key_path
        if not public.exists():
            public.write_text(public_key_to_text(key.public_key()) + "\n")
            created.append(str(public))
        return InitReport(
            home=home,
            database=describe_url(settings.database_url),
            key_id=key_id(key.public_key()),
            created=created,
            migrations_applied=opened.migrations_applied,
        )
    finally:
        opened.close()


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases, memory, or a URL that
    ``create_engine`` will refuse with its own message."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def _private_database(url: str, *, fix: bool = False) -> None:
    """Create a SQLite registry file mode 0600 before SQLite does (it would use the umask's
    0644); SQLite gives its -wal and -shm files the mode of the database. ``fix``: also
    tighten an existing file and its side files."""
    path = _sqlite_file(url)
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            if fix:
                for side in (path, *(path.with_name(path.name + s) for s in _SQLITE_SIDES)):
                    if side.exists():
                        side.chmod(0o600)
            return
        os.fchmod(fd, 0o600)  # whatever the umask
        os.close(fd)  # an empty file is an empty SQLite database
    except OSError as exc:
        raise ConfigError(f"cannot create the registry {path}: {exc.strerror or exc}") from exc


_SQLITE_SIDES = ("-wal", "-shm", "-journal")


def open_home(settings: Settings, *, require_init: bool = True, migrate: bool = False) -> Home:
    """Open the registry and the artifact store.

    Only ``init`` and ``upgrade`` change the schema (``migrate=True``). Any other command
    finds the registry at this edgefleet's schema or is refused with the command to run,
    before anything is written: an empty database is not created, let alone given tables,
    by a command that only reads (``status`` on a new PostgreSQL database)."""
    if require_init and not settings.is_initialised:
        raise ConfigError(
            f"{settings.home} is not an edgefleet home (no config.toml); run `edgefleet init`"
        )
    database = describe_url(settings.database_url)
    if migrate:
        _private_database(settings.database_url)
    else:
        sqlite = _sqlite_file(settings.database_url)
        if sqlite is not None and not sqlite.is_file():
            # connecting would create the file (and its folder): refuse first
            raise ConfigError(f"there is no registry at {database}: run `edgefleet init`")
    engine = create_engine(settings.database_url)
    try:
        applied = upgrade(engine) if migrate else []
        if not migrate:
            _check_schema(engine, database)
    except BaseException:
        engine.dispose()
        raise
    return Home(
        settings=settings,
        engine=engine,
        store=ArtifactStore(settings.artifacts_dir),
        migrations_applied=applied,
    )


def _check_schema(engine: Engine, database: str) -> None:
    found = current_version(engine)  # reads only: no table is created to find out
    if found == SCHEMA_VERSION:
        return
    if found == 0:
        raise ConfigError(f"the registry {database} is empty: run `edgefleet init`")
    if found < SCHEMA_VERSION:
        raise ConfigError(
            f"the registry is at schema {found}, this edgefleet needs {SCHEMA_VERSION}: "
            "run `edgefleet upgrade`"
        )
    raise ConfigError(
        f"the registry is at schema {found}, newer than this edgefleet understands "
        f"({SCHEMA_VERSION}): upgrade edgefleet-controller"
    )


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    description: str


@dataclass(frozen=True)
class UpgradeReport:
    """What ``upgrade_home`` did: the schema before and after, and each migration applied."""

    database: str
    from_version: int
    to_version: int
    applied: list[AppliedMigration]


def upgrade_home(settings: Settings) -> UpgradeReport:
    """Bring the registry's schema up to this edgefleet's (``edgefleet upgrade``): the one
    place besides ``init`` where migrations run."""
    if not settings.is_initialised:
        raise ConfigError(
            f"{settings.home} is not an edgefleet home (no config.toml); run `edgefleet init`"
        )
    _private_database(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        before = current_version(engine)
        applied = upgrade(engine)
        after = current_version(engine)
    finally:
        engine.dispose()
    described = {m.version: m.description for m in MIGRATIONS}
    return UpgradeReport(
        database=describe_url(settings.database_url),
        from_version=before,
        to_version=after,
        applied=[AppliedMigration(v, described[v]) for v in applied],
    )
