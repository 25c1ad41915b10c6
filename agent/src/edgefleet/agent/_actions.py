"""What each lifecycle state does: one action per state, each returning an :class:`Outcome`.

Actions never choose the next state (the table in ``_lifecycle`` does) and are
safe to run twice: a restart may repeat the one that was running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edgefleet.shared import Manifest, RollbackOrder, parse_signed_document, sha256_file
from edgefleet.shared.errors import (
    ArtifactError,
    ChecksumMismatch,
    DownloadError,
    EdgefleetError,
    ModelError,
    NoCandidate,
    NothingToRollBack,
    RollbackMismatch,
    SmokeTestFailed,
)

from ._fetch import ArtifactFetcher
from ._lifecycle import Action, DeploymentRecord, Outcome, State
from ._runtime import LoadedModel, benchmark, check_signature, load_model, smoke_test
from ._slot import ModelSlot
from ._store import AgentState, ServingRecord, StateStore


def load_stored(store: StateStore, sha256: str, record: ServingRecord | Manifest) -> LoadedModel:
    """Load a model from the store, refusing a file that is missing or no longer matches."""
    path = store.model_path(sha256)
    if not path.exists() or sha256_file(path) != sha256:
        raise ChecksumMismatch(f"stored model {path.name} is missing or damaged")
    return load_model(
        path,
        ref=record.model,
        deployment_id=record.deployment_id,
        sha256=sha256,
        runtime=record.runtime,
    )


def check_rollback(order: RollbackOrder, active: ServingRecord | None) -> None:
    """Raise :class:`RollbackMismatch` unless the device serves the deployment ``order`` undoes.

    A device serving nothing refuses every rollback this way too: there is no deployment
    to undo. One that serves the right deployment but kept no model before it accepts the
    order, which then fails as ``nothing_to_roll_back``.
    """
    if active is None or active.deployment_id != order.undoes:
        serving = repr(active.deployment_id) if active is not None else "nothing"
        raise RollbackMismatch(
            f"rollback {order.deployment_id} undoes deployment {order.undoes!r}, "
            f"but this device serves {serving}"
        )


class LifecycleActions:
    """The agent's side effects for deployments and rollbacks.

    ``state`` and ``slot`` are the agent's own, changed under ``lock``; ``wait``
    sleeps between download attempts and returns early when the agent stops.
    """

    def __init__(
        self,
        *,
        store: StateStore,
        state: AgentState,
        lock: threading.Lock,
        slot: ModelSlot,
        fetcher: ArtifactFetcher,
        download_attempts: int,
        download_retry_s: float,
        wait: Callable[[float], object],
    ) -> None:
        self._store = store
        self._state = state
        self._lock = lock
        self._slot = slot
        self._fetcher = fetcher
        self._download_attempts = download_attempts
        self._download_retry_s = download_retry_s
        self._wait = wait
        self._candidate: LoadedModel | None = None

    def table(self, record: DeploymentRecord) -> dict[State, Action]:
        """The action of each state this record's signed document can pass through."""
        doc = parse_signed_document(record.signed.payload_bytes())
        if isinstance(doc, Manifest):
            return {
                State.DOWNLOADING: lambda r: self.download(r, doc),
                State.VERIFYING: lambda r: self.verify(r, doc),
                State.LOADING: lambda r: self.load(r, doc),
                State.TESTING: lambda r: self.test(r, doc),
                State.SWITCHING: lambda r: self.switch(r, doc),
            }
        assert isinstance(doc, RollbackOrder), f"no lifecycle for {doc.kind}"
        return {State.ROLLING_BACK: lambda r: self.roll_back(r, doc)}

    def forget_candidate(self) -> None:
        self._candidate = None

    def download(self, record: DeploymentRecord, doc: Manifest) -> Outcome:
        if self._fetcher.is_stored(doc.artifact):
            return Outcome.SUCCESS  # already on disk (a redeploy); VERIFYING re-checks it
        start = time.monotonic()
        try:
            self._fetcher.download(doc.artifact)
        except DownloadError as exc:
            record.attempts += 1
            if record.attempts >= self._download_attempts:
                return record.fail(exc.code, f"{exc} (gave up after {record.attempts} attempts)")
            record.error_code, record.error = exc.code, str(exc)
            self._wait(self._download_retry_s * record.attempts)
            return Outcome.RETRY
        except ArtifactError as exc:
            return record.fail(exc.code, str(exc))
        record.timings_ms["download"] = _ms_since(start)
        return Outcome.SUCCESS

    def verify(self, record: DeploymentRecord, doc: Manifest) -> Outcome:
        start = time.monotonic()
        try:
            self._fetcher.verify(doc.artifact)
        except ArtifactError as exc:
            return record.fail(exc.code, str(exc))
        record.timings_ms["verify"] = _ms_since(start)
        return Outcome.SUCCESS

    def load(self, record: DeploymentRecord, doc: Manifest) -> Outcome:
        start = time.monotonic()
        try:
            candidate = load_stored(self._store, doc.artifact.sha256, doc)
            check_signature(candidate, doc.io)
        except EdgefleetError as exc:
            return record.fail(exc.code, str(exc))
        self._candidate = candidate
        record.timings_ms["load"] = _ms_since(start)
        return Outcome.SUCCESS

    def test(self, record: DeploymentRecord, doc: Manifest) -> Outcome:
        candidate = self._candidate
        if candidate is None:  # only reachable if a resume skipped LOADING; treat as failed
            return record.fail(NoCandidate.code, "no candidate model in memory to test")
        start = time.monotonic()
        try:
            smoke_test(candidate, doc.smoke_test)
            if doc.runtime.benchmark_runs:
                record.details.update(
                    benchmark(candidate, doc.smoke_test.inputs, doc.runtime.benchmark_runs)
                )
        except ModelError as exc:
            return record.fail(exc.code, str(exc))
        except Exception as exc:  # ORT errors during the benchmark are the model's fault
            return record.fail(SmokeTestFailed.code, f"{type(exc).__name__}: {exc}")
        record.timings_ms["test"] = _ms_since(start)
        return Outcome.SUCCESS

    def switch(self, record: DeploymentRecord, doc: Manifest) -> Outcome:
        candidate = self._candidate
        if candidate is None:
            # resumed after a crash past the tests: the file passed them, load it again
            try:
                candidate = load_stored(self._store, doc.artifact.sha256, doc)
            except EdgefleetError as exc:
                return record.fail(exc.code, str(exc))
        new = ServingRecord(
            model=doc.model,
            deployment_id=doc.deployment_id,
            sha256=doc.artifact.sha256,
            runtime=doc.runtime,
        )
        with self._lock:
            state = self._state
            if state.active is None or state.active.deployment_id != new.deployment_id:
                state.previous = state.active
            state.active = new
            self._slot.swap(candidate)
        return Outcome.SUCCESS

    def roll_back(self, record: DeploymentRecord, doc: RollbackOrder) -> Outcome:
        try:  # checked when accepted; again here for a record resumed after a restart
            check_rollback(doc, self._state.active)
        except RollbackMismatch as exc:
            return record.fail(exc.code, str(exc))
        target = self._state.previous
        if target is None:
            return record.fail(NothingToRollBack.code, "there is no previous model on this device")
        try:
            model = load_stored(self._store, target.sha256, target)
        except EdgefleetError as exc:
            return record.fail(exc.code, f"previous model unusable: {exc}")
        with self._lock:
            self._state.active, self._state.previous = target, self._state.active
            self._slot.swap(model)
        record.details["model"] = str(target.model)
        return Outcome.SUCCESS


def _ms_since(start: float) -> float:
    return round((time.monotonic() - start) * 1000.0, 3)
