"""Writing files that hold secrets or that another program reads: atomically, with the mode
(and group) set on the open file before it gets its name, never following a planted link."""

from __future__ import annotations

import contextlib
import grp
import os
import secrets
from pathlib import Path

from edgefleet.shared.errors import ConfigError


def write_private(path: Path, text: str, *, mode: int = 0o600, group: str | None = None) -> None:
    """Write ``text`` to ``path`` through a fresh temporary name in the same folder (O_EXCL,
    O_NOFOLLOW), fsync, then rename over ``path``. ``group``: hand the file to that group
    when it exists and we may (root); otherwise it keeps ours."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, mode)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), mode)  # whatever the umask
            if group is not None:
                _give_group(fh.fileno(), group)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _give_group(fd: int, group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return
    with contextlib.suppress(PermissionError):
        os.fchown(fd, -1, gid)
