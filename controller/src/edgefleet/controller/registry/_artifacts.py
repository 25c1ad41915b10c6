"""The content-addressed artifact store: ``artifacts/sha256/ab/abcd…``, written atomically."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgefleet.shared import fsync_dir, is_sha256, sha256_file
from edgefleet.shared.errors import ArtifactError, ChecksumMismatch, ConfigError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    size: int
    path: str  # relative to the store root; also the URL path agents fetch

    def __str__(self) -> str:
        return self.path


class ArtifactStore:
    """Files named by their sha256. Writing the same bytes twice is a no-op."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def relative_path(sha256: str) -> str:
        if not is_sha256(sha256):
            raise ArtifactError(f"not a sha256 digest: {sha256!r}")
        return f"sha256/{sha256[:2]}/{sha256}"

    def path_of(self, sha256: str) -> Path:
        return self.root / self.relative_path(sha256)

    def __contains__(self, sha256: object) -> bool:
        return isinstance(sha256, str) and is_sha256(sha256) and self.path_of(sha256).is_file()

    def put_file(self, source: Path) -> StoredArtifact:
        """Copy ``source`` in, hashing while copying; the file appears whole or not at all."""
        try:
            src = open(source, "rb")  # noqa: SIM115 - closed below, after the copy
        except FileNotFoundError as exc:
            raise ConfigError(f"{source} does not exist") from exc
        except OSError as exc:
            raise ArtifactError(f"cannot read {source}: {exc.strerror}") from exc
        with src:
            return self._write(src)

    def put_bytes(self, data: bytes) -> StoredArtifact:
        return self._write(io.BytesIO(data))

    def _write(self, src: io.BufferedIOBase | io.BytesIO) -> StoredArtifact:
        tmp_dir = self.root / "tmp"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="incoming-")
        except OSError as exc:
            raise ArtifactError(f"cannot write to the artifact store {self.root}: {exc}") from exc
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha256 = digest.hexdigest()
            final = self.path_of(sha256)
            if final.is_file() and final.stat().st_size == size:
                tmp.unlink()
                os.utime(final)  # stored just now again: young, so `artifacts gc` leaves it
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp, 0o644)
                os.replace(tmp, final)
                fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ArtifactError(f"cannot write to the artifact store {self.root}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredArtifact(sha256=sha256, size=size, path=self.relative_path(sha256))

    def verify(self, sha256: str) -> None:
        """Re-hash a stored file; raise if it is missing or no longer matches its name."""
        path = self.path_of(sha256)
        if not path.is_file():
            raise ArtifactError(f"artifact {sha256[:12]} is missing from {self.root}")
        if sha256_file(path) != sha256:
            raise ChecksumMismatch(f"artifact {path} does not hash to its name")
