"""Fetch and verify an artifact: stream it to a partial file, check size and sha256, store it.

Deployments run the two halves as separate lifecycle states (DOWNLOADING, VERIFYING);
benchmarks run both at once. Either way a file enters the model store only verified.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

import httpx

from edgefleet.shared import ArtifactRef, sha256_file
from edgefleet.shared.errors import ArtifactMissing, ChecksumMismatch

from ._download import download
from ._store import StateStore


class ArtifactFetcher:
    """Artifacts over the injected HTTP client into the agent's model store."""

    def __init__(self, http: httpx.Client, store: StateStore, *, min_bytes_per_s: float) -> None:
        self._http = http
        self._store = store
        self._min_bytes_per_s = min_bytes_per_s

    def is_stored(self, artifact: ArtifactRef) -> bool:
        return self._store.model_path(artifact.sha256).exists()

    def download(self, artifact: ArtifactRef) -> None:
        """Bring the partial file to the declared size, resuming; raises an ``ArtifactError``."""
        download(
            self._http,
            artifact.url,
            self._store.part_path(artifact.sha256),
            size=artifact.size,
            min_bytes_per_s=self._min_bytes_per_s,
        )

    def verify(self, artifact: ArtifactRef) -> Path:
        """Check the downloaded (or already stored) file and move it into the store.

        A download that does not match is deleted, so a retry starts from nothing. A stored
        file is deleted only when its bytes no longer hash to its name: one that does is
        intact, and a manifest naming its hash with another size is wrong, not the file,
        which the active or previous model may well be.
        """
        final = self._store.model_path(artifact.sha256)
        source = final if final.exists() else self._store.part_path(artifact.sha256)
        try:
            size = source.stat().st_size
        except OSError as exc:
            raise ArtifactMissing("the downloaded file is gone") from exc
        digest = sha256_file(source)
        if size != artifact.size or digest != artifact.sha256:
            if source != final:
                source.unlink(missing_ok=True)
            elif digest != artifact.sha256:
                self._store.remove_damaged(artifact.sha256)
            raise ChecksumMismatch(
                f"artifact has {size} bytes and sha256 {digest[:12]}…, "
                f"manifest says {artifact.size} bytes and {artifact.sha256[:12]}…"
            )
        if source != final:
            os.replace(source, final)
        return final

    def fetch(self, artifact: ArtifactRef) -> Path:
        """Download unless stored, then verify: the stored path of a checked file."""
        if not self.is_stored(artifact):
            self.download(artifact)
        return self.verify(artifact)

    def holding(self, artifact: ArtifactRef) -> AbstractContextManager[None]:
        """Keep the artifact's files from being deleted while a one-off use runs."""
        return self._store.holding(artifact.sha256)

    def discard(self, artifact: ArtifactRef) -> None:
        """Forget an artifact fetched for a one-off use (a benchmark), unless a record
        (the active, previous or deploying model) refers to it."""
        self._store.remove_model(artifact.sha256)
