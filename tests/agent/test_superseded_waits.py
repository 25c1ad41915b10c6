"""A device waiting out an artifact-server outage stays responsive, for real: an agent
in-process on its production MQTT link and HTTP client, a private Mosquitto, the artifact
server behind a gate that refuses connections while closed.

While a deployment waits to retry its download, a ping is answered at once and the wait
goes on; a rollback order for it, or a newer deploy, supersedes it: it fails as
``superseded``, the newer order is carried out, and the old version is never downloaded
or committed, not even once the server is back or after a restart in between. Each
backoff lasts a known time (the top of its jitter window), so counts, not clocks, are
asserted: a wait of 30 s that a test sees end in under 10 was ended by a command.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgefleet import shared
from edgefleet.agent import Agent, State
from edgefleet.agent._death_test import DeathTestPause
from edgefleet.harness import ArtifactServer, Observer, Operator
from edgefleet.shared import DeviceState, Manifest, PingCommand
from edgefleet.shared.errors import DownloadError, Superseded

from .conftest import OUTAGE_DEVICE as DEVICE
from .gate import Gate
from .inprocess import fixed_waits

S = DeviceState
DEPLOYED = [S.DOWNLOADING, S.VERIFYING, S.LOADING, S.TESTING, S.SWITCHING, S.COMMITTED]
LONG_WAIT_S = 30.0  # longer than any test here waits for an answer
ANSWER_S = 10.0


def _position(observer: Observer, message: Any) -> int:
    """The observer's mark just past ``message``."""
    with observer.lock:
        return next(i for i, (_, m) in enumerate(observer.messages) if m is message) + 1


def _since(observer: Observer, since: int) -> list[Any]:
    with observer.lock:
        return [m for _, m in observer.messages[since:]]


def _event(observer: Observer, deployment_id: str, state: DeviceState, since: int = 0) -> Any:
    return observer.wait_for(
        lambda m: m.kind == "event" and m.deployment_id == deployment_id and m.state is state,
        since=since,
    )


def _waiting_to_retry(observer: Observer, deployment: Manifest) -> int:
    """Wait for the deployment's first failed attempt and the status saved after it (the
    agent is then in its backoff); return the mark past that status."""
    failed = observer.wait_for(
        lambda m: (
            m.kind == "event"
            and m.deployment_id == deployment.deployment_id
            and m.error_code == DownloadError.code
        )
    )
    assert failed.details["download_attempts"] == 1
    saved = observer.wait_for(
        lambda m: m.kind == "status" and m.device_id == DEVICE and m.state is S.DOWNLOADING,
        since=_position(observer, failed),
    )
    return _position(observer, saved)


def _ping_answered(operator: Operator, observer: Observer, since: int) -> Any:
    """Ping the device; its status must come before any further download attempt."""
    operator.send(DEVICE, shared.encode(PingCommand(nonce="reconcile")))
    status = observer.wait_for(
        lambda m: m.kind == "status" and m.device_id == DEVICE, ANSWER_S, since
    )
    between = _since(observer, since)[: _position(observer, status) - since]
    assert [m for m in between if m.kind == "event"] == []  # no attempt made it speak
    return status


def _serving(
    start_agent: Callable[..., Agent], gate: Gate, operator: Operator, observer: Observer,
    model: Path, **settings: Any,
) -> tuple[Agent, Manifest]:  # fmt: skip
    """An agent serving ``model``, deployed while the server was up; the gate closed after."""
    agent = start_agent(gate.base_url, **settings)
    gate.open()
    served = operator.deploy(DEVICE, model)
    _event(observer, served.deployment_id, S.COMMITTED)
    gate.close()
    return agent, served


def test_a_ping_during_the_wait_is_answered_and_the_wait_goes_on(
    start_agent, gate: Gate, operator: Operator, observer: Observer,
    digits_models: dict[str, Path],
) -> None:  # fmt: skip
    start_agent(gate.base_url, retry=fixed_waits(5.0))
    m = operator.deploy(DEVICE, digits_models["v1"])
    since = _waiting_to_retry(observer, m)

    status = _ping_answered(operator, observer, since)
    assert (status.online, status.state, status.deployment_id) == (
        True, S.DOWNLOADING, m.deployment_id,
    )  # fmt: skip
    gate.open()

    # the wait ran on to its end, and the attempt after it, the first since the ping, went
    # through: one failed attempt in all (a ping that ended the wait would have made another)
    done = _event(observer, m.deployment_id, S.COMMITTED)
    assert done.details["download_attempts"] == 1


def _rollback(operator: Operator, waiting: Manifest, models: dict[str, Path]) -> Any:
    order_id, payload = operator.rollback_payload(DEVICE, undoes=waiting.deployment_id)
    return order_id, payload, [S.ROLLING_BACK, S.ROLLED_BACK]


def _newer_deploy(operator: Operator, waiting: Manifest, models: dict[str, Path]) -> Any:
    newer = operator.manifest(DEVICE, models["v3"])
    return newer.deployment_id, operator.deploy_payload(newer), DEPLOYED


ORDERS = [
    # name, the newer order, the model serving after it
    ("rollback", _rollback, "v1"),
    ("newer deploy", _newer_deploy, "v3"),
]


@pytest.mark.parametrize(("name", "order", "serves"), ORDERS, ids=[o[0] for o in ORDERS])
def test_a_newer_order_supersedes_a_deployment_waiting_out_an_outage(
    start_agent, gate: Gate, artifact_server: ArtifactServer, operator: Operator,
    observer: Observer, digits_models: dict[str, Path], name: str, order: Any, serves: str,
) -> None:  # fmt: skip
    agent, served = _serving(
        start_agent, gate, operator, observer, digits_models["v1"], retry=fixed_waits(LONG_WAIT_S)
    )
    waiting = operator.deploy(DEVICE, digits_models["v2"])
    since = _waiting_to_retry(observer, waiting)
    status = _ping_answered(operator, observer, since)
    assert status.active.deployment_id == served.deployment_id

    gate.open()  # the server is back: the waiting deployment's next attempt would succeed
    order_id, payload, states = order(operator, waiting, digits_models)
    operator.send(DEVICE, payload)

    superseded = observer.wait_for(
        lambda m: m.kind == "event" and m.deployment_id == waiting.deployment_id
        and m.state is S.FAILED,
        ANSWER_S,
    )  # fmt: skip
    assert (superseded.error_code, superseded.details["superseded_by"]) == (
        Superseded.code, order_id,
    )  # fmt: skip
    assert superseded.details["download_attempts"] == 1
    last = _event(observer, order_id, states[-1])
    newer = [e.state for e in observer.events(DEVICE, order_id)]
    assert newer == states
    # the end of the waiting deployment was said before the newer order's first word
    first = _event(observer, order_id, states[0])
    assert _position(observer, superseded) < _position(observer, first)
    assert [e.state for e in observer.events(DEVICE, waiting.deployment_id)] == [
        S.DOWNLOADING, S.DOWNLOADING, S.FAILED,
    ]  # fmt: skip

    after = observer.wait_for(
        lambda m: m.kind == "status" and m.device_id == DEVICE and m.state is states[-1],
        since=_position(observer, last),
    )
    back = states[-1] is S.ROLLED_BACK
    assert after.active.deployment_id == (served.deployment_id if back else order_id)
    if back:
        assert last.details["never_served"] == waiting.deployment_id
        assert after.previous is None  # nothing swapped: the model before stays put
    model = agent.slot.get()
    assert model is not None and model.sha256 == shared.sha256_file(digits_models[serves])
    # the superseded version was never asked for once the server was back
    assert f"/{waiting.artifact.url}" not in [path for path, _ in artifact_server.requests]


def test_a_restart_between_the_superseded_end_and_the_newer_order_resumes_right(
    start_agent, gate: Gate, artifact_server: ArtifactServer, operator: Operator,
    observer: Observer, digits_models: dict[str, Path], tmp_path: Path,
) -> None:  # fmt: skip
    """The agent stops right after saving the waiting deployment as superseded, before it
    accepted the rollback that superseded it: the broker delivers the unacknowledged
    rollback again to the next start, which carries it out; the old version stays out."""
    agent, served = _serving(
        start_agent, gate, operator, observer, digits_models["v1"],
        retry=fixed_waits(LONG_WAIT_S), pause=DeathTestPause(State.FAILED, LONG_WAIT_S),
    )  # fmt: skip
    waiting = operator.deploy(DEVICE, digits_models["v2"])
    _waiting_to_retry(observer, waiting)
    order_id, payload = operator.rollback_payload(DEVICE, undoes=waiting.deployment_id)
    operator.send(DEVICE, payload)
    superseded = _event(observer, waiting.deployment_id, S.FAILED)
    assert superseded.error_code == Superseded.code
    agent.stop()  # held in the pause, just after the save: the rollback not yet accepted

    saved = json.loads((tmp_path / "agent" / "state.json").read_text())
    assert (saved["current"]["deployment_id"], saved["current"]["state"]) == (
        waiting.deployment_id, "failed",
    )  # fmt: skip
    assert saved["last_sequence"] == waiting.sequence
    assert order_id not in saved["recent_ids"]

    gate.open()
    since = observer.mark()
    again = start_agent(gate.base_url, retry=fixed_waits(LONG_WAIT_S))
    rolled_back = _event(observer, order_id, S.ROLLED_BACK, since)
    assert rolled_back.details["never_served"] == waiting.deployment_id
    assert [e.state for e in observer.events(DEVICE, order_id)] == [S.ROLLING_BACK, S.ROLLED_BACK]
    assert [e.state for e in observer.events(DEVICE, waiting.deployment_id)] == [
        S.DOWNLOADING, S.DOWNLOADING, S.FAILED,
    ]  # fmt: skip
    assert again.state.active is not None
    assert again.state.active.deployment_id == served.deployment_id
    assert again.state.last_sequence > waiting.sequence
    assert f"/{waiting.artifact.url}" not in [path for path, _ in artifact_server.requests]
