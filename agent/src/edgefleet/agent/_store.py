"""The agent's persisted state: one JSON file, replaced atomically.

Written with temp file, fsync, rename and a directory fsync, so after a power
cut the file holds either the old state or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from edgefleet.shared import ModelRef, RuntimeSettings, ServingModel, fsync_dir
from edgefleet.shared.errors import ConfigError

from ._lifecycle import DeploymentRecord

RECENT_IDS = 256  # deployment ids remembered for de-duplication of QoS 1 redeliveries


class ServingRecord(BaseModel):
    """A model that served or serves: enough to load it again at start-up."""

    model: ModelRef
    deployment_id: str
    sha256: str
    runtime: RuntimeSettings

    def public(self) -> ServingModel:
        return ServingModel(model=self.model, deployment_id=self.deployment_id, sha256=self.sha256)


class AgentState(BaseModel):
    last_sequence: int = 0
    active: ServingRecord | None = None
    previous: ServingRecord | None = None
    current: DeploymentRecord | None = None
    recent_ids: list[str] = Field(default_factory=list)

    def remember(self, deployment_id: str) -> None:
        if deployment_id not in self.recent_ids:
            self.recent_ids.append(deployment_id)
            del self.recent_ids[:-RECENT_IDS]

    def knows(self, deployment_id: str) -> bool:
        return deployment_id in self.recent_ids or (
            self.current is not None and self.current.deployment_id == deployment_id
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

    def model_path(self, sha256: str) -> Path:
        return self.models / f"{sha256}.onnx"

    def part_path(self, sha256: str) -> Path:
        return self.downloads / f"{sha256}.part"

    def load(self) -> AgentState:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return AgentState()
        except OSError as exc:
            raise ConfigError(f"cannot read agent state {self.path}: {exc}") from exc
        try:
            return AgentState.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(
                f"agent state {self.path} is corrupt ({exc.error_count()} problems); "
                "move it aside to start fresh"
            ) from exc

    def save(self, state: AgentState) -> None:
        data = state.model_dump_json(indent=1).encode()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.root)

    def prune_models(self, keep: set[str]) -> None:
        """Delete stored models and partial downloads that no one will need again."""
        for path in list(self.models.glob("*.onnx")) + list(self.downloads.glob("*.part")):
            if path.name.split(".")[0] not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()
