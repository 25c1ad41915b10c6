"""Download retries in-process: what the failure event says, a stop during the backoff, and a
deployment resumed after its manifest expired. Artifacts over httpx.MockTransport, real
models, real state folder. Outages of a real server and broker are in test_outages.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.agent._store import AgentState
from edgefleet.harness import wait_until
from edgefleet.shared import DeviceState
from edgefleet.shared.errors import ArtifactError, DownloadError

from .inprocess import Fleet, inbound

S = DeviceState


def test_the_attempt_cap_still_ends_retries_and_says_so(fleet: Fleet) -> None:
    agent = fleet.agent()  # the fleet's config caps attempts at 2
    fleet.artifacts.down = True
    deployment_id, payload = fleet.deploy("v1")
    agent.handle(inbound(payload))
    *_, retried, failed = fleet.link.events(deployment_id)
    assert (retried.state, retried.error_code) == (S.DOWNLOADING, DownloadError.code)
    assert "attempt 1; next in" in retried.message
    assert (failed.state, failed.error_code) == (S.FAILED, DownloadError.code)
    assert failed.details["gave_up"] == "attempts"
    assert failed.details["download_attempts"] == 2
    assert "gave up after 2 attempts" in failed.message
    assert len(fleet.artifacts.requests) == 2


def test_a_missing_artifact_is_not_asked_for_again(fleet: Fleet) -> None:
    fleet.config = dataclasses.replace(fleet.config, download_attempts=None)  # no cap
    agent = fleet.agent()
    deployment_id, payload = fleet.deploy("v1")
    fleet.artifacts.bodies.clear()  # 404 from now on
    agent.handle(inbound(payload))
    failed = fleet.link.events(deployment_id)[-1]
    assert (failed.state, failed.error_code) == (S.FAILED, ArtifactError.code)
    assert failed.details["gave_up"] == "permanent"
    assert "HTTP 404" in failed.message and "gave up after 1 attempt," in failed.message
    assert len(fleet.artifacts.requests) == 1


def _saved(fleet: Fleet) -> dict:
    return json.loads((fleet.config.state_dir / "state.json").read_text())["current"]


def test_a_stop_during_the_backoff_leaves_the_download_to_the_next_start(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "edgefleet.agent")
    fleet.config = dataclasses.replace(
        fleet.config, download_attempts=None, download_retry_s=30.0, download_retry_max_s=30.0
    )
    fleet.artifacts.down = True
    agent = fleet.agent()
    agent.start()
    deployment_id, payload = fleet.deploy("v1")
    assert fleet.link.on_message is not None
    fleet.link.on_message(inbound(payload))
    wait_until(
        lambda: any(e.error_code for e in fleet.link.events(deployment_id)),
        20,
        "the first failed attempt",
        every=0.01,
    )
    agent.stop()
    wait_until(lambda: "the next start resumes it" in caplog.text, 10, "the interrupted wait")
    saved = _saved(fleet)
    assert (saved["state"], saved["retry_at"] is not None) == ("downloading", True)
    assert saved["attempts"] >= 1

    # back up, and the policy says not to wait: the next start downloads and commits
    fleet.artifacts.down = False
    fleet.config = dataclasses.replace(fleet.config, download_retry_s=0.0, download_retry_max_s=0.0)
    again = fleet.agent()
    again.start()
    try:
        wait_until(
            lambda: S.COMMITTED in [e.state for e in fleet.link.events(deployment_id)],
            20,
            "the resumed download",
            every=0.01,
        )
    finally:
        again.stop()


class _Killed(BaseException):
    """Leaves the agent mid-lifecycle, the way SIGKILL would."""


def test_a_download_resumed_after_its_manifest_expired_is_given_up(fleet: Fleet) -> None:
    first = fleet.agent()
    expires = datetime.now(UTC) + timedelta(seconds=1)
    deployment_id, payload = fleet.deploy("v1", expires_at=expires)
    real_save = first.store.save

    def die_in_downloading(state: AgentState) -> None:
        real_save(state)
        if state.current is not None and state.current.state is S.DOWNLOADING:
            raise _Killed

    first.store.save = die_in_downloading  # type: ignore[method-assign]
    with pytest.raises(_Killed):
        first.handle(inbound(payload))
    wait_until(lambda: datetime.now(UTC) > expires, 10, "the manifest's expiry")

    second = fleet.agent()
    second.start()
    try:
        wait_until(lambda: fleet.link.events(deployment_id), 20, "the resumed deployment")
    finally:
        second.stop()
    (failed,) = fleet.link.events(deployment_id)
    assert (failed.state, failed.error_code) == (S.FAILED, DownloadError.code)
    assert failed.details["gave_up"] == "expired"
    assert "download unfinished (gave up after 0 attempts, expired" in failed.message
    assert fleet.artifacts.requests == []
