"""What each lifecycle state does: one action per state, each returning an :class:`Outcome`.

Actions never choose the next state (the table in ``_lifecycle`` does) and are
safe to run twice: a restart may repeat the one that was running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

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
from ._lifecycle import Action, DeploymentRecord, Interrupted, Outcome, State
from ._retry import DownloadRetry, GiveUp
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

    ``state`` and ``slot`` are the agent's own, changed under ``lock``; ``retry`` says
    when a failed download is tried again; ``wait`` sleeps between download attempts and
    returns True, early, when the agent stops; ``now`` is the wall clock (manifests expire
    by it, and a deadline must hold across restarts).
    """

    def __init__(
        self,
        *,
        store: StateStore,
        state: AgentState,
        lock: threading.Lock,
        slot: ModelSlot,
        fetcher: ArtifactFetcher,
        retry: DownloadRetry,
        wait: Callable[[float], bool],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._state = state
        self._lock = lock
        self._slot = slot
        self._fetcher = fetcher
        self._retry = retry
        self._wait = wait
        self._now = now
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
        if record.retry_at is not None:
            # the backoff runs here, after the failure was reported and the record saved,
            # so a restart waits out only what is left of it
            pause = (record.retry_at - self._now()).total_seconds()
            if self._wait(min(max(pause, 0.0), self._retry.max_s)):
                raise Interrupted(f"stopped while waiting to download {doc.deployment_id}")
            record.retry_at = None
        # a record resumed after a restart may already be past its last chance
        stop = self._stop_retrying(record, doc, self._now())
        if stop is not None:
            return self._give_up(record, DownloadError.code, "download unfinished", *stop)
        start = time.monotonic()
        try:
            self._fetcher.download(doc.artifact)
        except DownloadError as exc:  # transient: the server or the network may come back
            record.attempts += 1
            delay = self._retry.delay(record.attempts)
            retry_at = self._now() + timedelta(seconds=delay)
            stop = self._stop_retrying(record, doc, retry_at)
            if stop is not None:
                return self._give_up(record, exc.code, str(exc), *stop)
            record.retry_at = retry_at
            record.details["download_attempts"] = record.attempts
            record.error_code = exc.code
            record.error = f"{exc} (attempt {record.attempts}; next in {delay:.1f} s)"
            return Outcome.RETRY
        except ArtifactError as exc:  # permanent: asking again gets the same answer
            record.attempts += 1
            return self._give_up(record, exc.code, str(exc), GiveUp.PERMANENT, "not retried")
        record.timings_ms["download"] = _ms_since(start)
        return Outcome.SUCCESS

    def _stop_retrying(
        self, record: DeploymentRecord, doc: Manifest, at: datetime
    ) -> tuple[GiveUp, str] | None:
        return self._retry.stop(
            attempts=record.attempts,
            at=at,
            accepted_at=record.accepted_at,
            expires_at=doc.expires_at,
        )

    def _give_up(
        self, record: DeploymentRecord, code: str, error: str, why: GiveUp, detail: str
    ) -> Outcome:
        record.details["download_attempts"] = record.attempts
        record.details["gave_up"] = why.value
        tries = "attempt" if record.attempts == 1 else "attempts"
        return record.fail(
            code, f"{error} (gave up after {record.attempts} {tries}, {why.value}: {detail})"
        )

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
