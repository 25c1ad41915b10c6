"""The agent's persisted state: one JSON file, replaced atomically; and its model files.

Written with temp file, fsync, rename and a directory fsync, so after a power
cut the file holds either the old state or the new one, never half of each.
A model file is deleted only when no record refers to it (see :meth:`StateStore.in_use`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from edgefleet.shared import (
    MAX_TEXT,
    Manifest,
    ModelRef,
    RuntimeSettings,
    ServingModel,
    fsync_dir,
    parse_signed_document,
)
from edgefleet.shared.errors import ConfigError, MessageError

from ._lifecycle import TERMINAL, DeploymentRecord, State
from ._trust import TrustState

RECENT_IDS = 256  # deployment ids remembered for de-duplication of QoS 1 redeliveries
# finished deployments whose outcome is kept, to answer a command the controller sends
# again because it never heard how it ended
FINISHED_KEPT = 32


class ServingRecord(BaseModel):
    """A model that served or serves: enough to load it again at start-up."""

    model: ModelRef
    deployment_id: str
    sha256: str
    runtime: RuntimeSettings

    def public(self) -> ServingModel:
        return ServingModel(model=self.model, deployment_id=self.deployment_id, sha256=self.sha256)


class FinishedDeployment(BaseModel):
    """How a deployment or rollback ended: what its final event said."""

    deployment_id: str
    kind: str
    state: State
    error_code: str | None = None
    error: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    details: dict[str, float | int | str | None] = Field(default_factory=dict)

    @classmethod
    def of(cls, record: DeploymentRecord) -> FinishedDeployment:
        return cls(
            deployment_id=record.deployment_id,
            kind=record.kind,
            state=record.state,
            error_code=record.error_code,
            error=None if record.error is None else record.error[:MAX_TEXT],
            timings_ms=dict(record.timings_ms),
            details=dict(record.details),
        )


class AgentState(BaseModel):
    last_sequence: int = 0
    active: ServingRecord | None = None
    previous: ServingRecord | None = None
    current: DeploymentRecord | None = None
    recent_ids: list[str] = Field(default_factory=list)
    finished: list[FinishedDeployment] = Field(default_factory=list)  # oldest first
    trust: TrustState = Field(default_factory=TrustState)  # the last trust update applied

    def remember(self, deployment_id: str) -> None:
        if deployment_id not in self.recent_ids:
            self.recent_ids.append(deployment_id)
            del self.recent_ids[:-RECENT_IDS]

    def finish(self, record: DeploymentRecord) -> None:
        """Keep how ``record`` ended, among the last :data:`FINISHED_KEPT` outcomes."""
        self.finished = [f for f in self.finished if f.deployment_id != record.deployment_id]
        self.finished.append(FinishedDeployment.of(record))
        del self.finished[:-FINISHED_KEPT]

    def outcome(self, deployment_id: str) -> FinishedDeployment | None:
        """How the deployment ``deployment_id`` ended, if it did and that is still known
        (a state file written before outcomes were kept still has its last record)."""
        for finished in reversed(self.finished):
            if finished.deployment_id == deployment_id:
                return finished
        current = self.current
        if current is None or current.deployment_id != deployment_id:
            return None
        return FinishedDeployment.of(current) if current.state in TERMINAL else None

    def in_progress(self, deployment_id: str) -> bool:
        current = self.current
        return (
            current is not None
            and current.deployment_id == deployment_id
            and current.state not in TERMINAL
        )

    def referenced(self) -> set[str]:
        """The sha256 of every model file a record here still needs: the active and previous
        models (a rollback loads the previous one) and the deployment in progress."""
        needed = {r.sha256 for r in (self.active, self.previous) if r is not None}
        current = self.current
        if current is not None and current.state not in TERMINAL:
            with contextlib.suppress(MessageError):  # accepted before, so it parses
                doc = parse_signed_document(current.signed.payload_bytes())
                if isinstance(doc, Manifest):
                    needed.add(doc.artifact.sha256)
        return needed

    def knows(self, deployment_id: str) -> bool:
        return (
            deployment_id in self.recent_ids
            or (self.current is not None and self.current.deployment_id == deployment_id)
            or any(f.deployment_id == deployment_id for f in self.finished)
        )


class StateStore:
    """Where the agent keeps its state, models and partial downloads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "state.json"
        self.models = root / "models"
        self.downloads = root / "downloads"
        for folder in (root, self.models, self.downloads):
            folder.mkdir(parents=True, exist_ok=True)
        self._state: AgentState | None = None  # the state last loaded or saved: the live one
        self._held: Counter[str] = Counter()  # files in use outside the state (benchmarks)
        self._held_lock = threading.Lock()

    def model_path(self, sha256: str) -> Path:
        return self.models / f"{sha256}.onnx"

    def part_path(self, sha256: str) -> Path:
        return self.downloads / f"{sha256}.part"

    def load(self) -> AgentState:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            self._state = AgentState()
            return self._state
        except OSError as exc:
            raise ConfigError(f"cannot read agent state {self.path}: {exc}") from exc
        try:
            self._state = AgentState.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(
                f"agent state {self.path} is corrupt ({exc.error_count()} problems); "
                "move it aside to start fresh"
            ) from exc
        return self._state

    def save(self, state: AgentState) -> None:
        self._state = state
        data = state.model_dump_json(indent=1).encode()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.root)

    @contextlib.contextmanager
    def holding(self, sha256: str) -> Iterator[None]:
        """Mark a model file in use for the duration (a benchmark that is not in the state)."""
        with self._held_lock:
            self._held[sha256] += 1
        try:
            yield
        finally:
            with self._held_lock:
                self._held[sha256] -= 1
                if self._held[sha256] <= 0:
                    del self._held[sha256]

    def in_use(self) -> set[str]:
        """Model files some record refers to: never deleted."""
        referenced = self._state.referenced() if self._state is not None else set()
        with self._held_lock:
            return referenced | set(self._held)

    def remove_model(self, sha256: str) -> bool:
        """Delete a model and its partial download unless a record refers to it."""
        if sha256 in self.in_use():
            return False
        self.part_path(sha256).unlink(missing_ok=True)
        self.model_path(sha256).unlink(missing_ok=True)
        return True

    def remove_damaged(self, sha256: str) -> None:
        """Delete a stored file whose bytes no longer hash to its name: no record can use it,
        and while it stays, a redeploy would find it stored and never download it again."""
        self.model_path(sha256).unlink(missing_ok=True)

    def prune_models(self) -> None:
        """Delete stored models and partial downloads that no record refers to."""
        keep = self.in_use()
        for path in list(self.models.glob("*.onnx")) + list(self.downloads.glob("*.part")):
            if path.name.split(".")[0] not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()
