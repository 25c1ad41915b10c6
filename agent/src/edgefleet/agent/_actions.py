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
    Superseded,
)

from ._fetch import ArtifactFetcher
from ._inbox import Wake, Woken
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


def check_rollback(order: RollbackOrder, state: AgentState) -> bool:
    """Whether ``order`` swaps the model back; :class:`RollbackMismatch` if it does not apply.

    It applies to the deployment the device serves (True: back to the model before it), and
    to one the device never served because this very order superseded it while its download
    waited to be retried (False: the model serving now is the one from before it, and stays).
    Anything else is refused: a device serving nothing refuses every rollback this way too.
    One serving the right deployment but no model before it accepts the order, which then
    fails as ``nothing_to_roll_back``.
    """
    active = state.active
    if active is not None and active.deployment_id == order.undoes:
        return True
    if _supersedes(order, state):
        return False
    serving = repr(active.deployment_id) if active is not None else "nothing"
    raise RollbackMismatch(
        f"rollback {order.deployment_id} undoes deployment {order.undoes!r}, "
        f"but this device serves {serving}"
    )


def _supersedes(order: RollbackOrder, state: AgentState) -> bool:
    """Whether ``order`` undoes a deployment that never switched: one waiting to retry its
    download now (accepting the order supersedes it), or one the order superseded before."""
    current = state.current
    if (
        current is not None
        and current.deployment_id == order.undoes
        and current.state is State.DOWNLOADING
    ):
        return True
    ended = state.outcome(order.undoes)
    return (
        ended is not None
        and ended.error_code == Superseded.code
        and ended.details.get("superseded_by") == order.deployment_id
    )


class LifecycleActions:
    """The agent's side effects for deployments and rollbacks.

    ``state`` and ``slot`` are the agent's own, changed under ``lock``; ``retry`` says
    when a failed download is tried again; ``wait(deployment_id, seconds)`` waits between
    download attempts and says why it ended: the time ran out, the agent stops, or a newer
    order superseded the deployment (see ``_inbox``); ``now`` is the wall clock (manifests
    expire by it, and a deadline must hold across restarts).
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
        wait: Callable[[str, float], Wake],
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
            wake = self._wait(doc.deployment_id, min(max(pause, 0.0), self._retry.max_s))
            if wake.why is Woken.STOPPING:
                raise Interrupted(f"stopped while waiting to download {doc.deployment_id}")
            if wake.why is Woken.SUPERSEDED:
                return self._superseded(record, wake)
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

    def _superseded(self, record: DeploymentRecord, wake: Wake) -> Outcome:
        # never switched: the model serving now goes on serving, and this record, saved as
        # failed before the newer order is accepted, keeps the download from resuming
        record.details["superseded_by"] = wake.command_id
        tries = "attempt" if record.attempts == 1 else "attempts"
        return record.fail(
            Superseded.code,
            f"superseded by {wake.command_kind} {wake.command_id} while waiting to retry "
            f"its download (after {record.attempts} failed {tries})",
        )

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
            swap = check_rollback(doc, self._state)
        except RollbackMismatch as exc:
            return record.fail(exc.code, str(exc))
        if not swap:  # it never served here: undone already, the model before it serves
            record.details["never_served"] = doc.undoes
            if self._state.active is not None:
                record.details["model"] = str(self._state.active.model)
            return Outcome.SUCCESS
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
