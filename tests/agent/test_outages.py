"""Outages waited out, for real: an agent in-process with its production MQTT link and
HTTP client, a private Mosquitto, and the artifact server behind a gate that refuses
connections while closed. Backoffs are short by config; counts, not clocks, are asserted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet import shared
from edgefleet.harness import ArtifactServer, Broker, Observer, Operator, wait_until
from edgefleet.shared import ArtifactRef, DeviceState, EventMessage
from edgefleet.shared.errors import ArtifactError, DownloadError

from .conftest import OUTAGE_DEVICE as DEVICE
from .gate import Gate
from .inprocess import inbound

S = DeviceState
DEPLOYED = [S.DOWNLOADING, S.VERIFYING, S.LOADING, S.TESTING, S.SWITCHING, S.COMMITTED]


def events(observer: Observer, deployment_id: str) -> list[Any]:
    return observer.events(DEVICE, deployment_id)


def final(observer: Observer, deployment_id: str, timeout: float = 30.0) -> Any:
    return observer.wait_for(
        lambda m: (
            m.kind == "event"
            and m.deployment_id == deployment_id
            and m.state in (S.COMMITTED, S.FAILED)
        ),
        timeout,
    )


def test_an_outage_longer_than_five_attempts_is_waited_out_and_the_download_resumed(
    start_agent, gate: Gate, artifact_server: ArtifactServer, operator: Operator,
    observer: Observer, digits_models: dict[str, Path],
) -> None:  # fmt: skip
    start_agent(gate.base_url)
    m = operator.deploy(DEVICE, digits_models["v1"])
    # the old agent gave up after five quick attempts; this one is still at it
    observer.wait_for(
        lambda e: (
            e.kind == "event"
            and e.deployment_id == m.deployment_id
            and e.details.get("download_attempts", 0) >= 6
        )
    )
    assert artifact_server.requests == []  # refused at the door, all of them
    artifact_server.faults.drop_after = 4000  # the first transfer is cut: the next resumes
    gate.open()

    done = final(observer, m.deployment_id)
    assert (done.state, done.error_code) == (S.COMMITTED, None)
    assert done.details["download_attempts"] >= 7
    (path, first), (again, resumed) = artifact_server.requests
    assert path == again == f"/{m.artifact.url}"
    assert first is None and resumed is not None and resumed != "bytes=0-"
    failures = [e for e in events(observer, m.deployment_id) if e.error_code]
    assert {e.error_code for e in failures} == {DownloadError.code}
    assert all(e.state is S.DOWNLOADING and e.ok for e in failures)


GIVE_UP = [
    # reason, manifest lifetime (s), agent settings
    ("expired", 3.0, {}),
    ("deadline", 3600.0, {"download_deadline_s": 1.0}),
]


@pytest.mark.parametrize(("reason", "lifetime", "settings"), GIVE_UP, ids=[c[0] for c in GIVE_UP])
def test_a_server_down_past_the_last_chance_fails_the_deployment_saying_why(
    start_agent, gate: Gate, operator: Operator, observer: Observer,
    digits_models: dict[str, Path], reason: str, lifetime: float, settings: dict[str, Any],
) -> None:  # fmt: skip
    agent = start_agent(gate.base_url, **settings)
    m = operator.deploy(DEVICE, digits_models["v1"], expires_in=lifetime)
    failed = final(observer, m.deployment_id)
    assert (failed.state, failed.ok, failed.error_code) == (S.FAILED, False, DownloadError.code)
    assert failed.details["gave_up"] == reason
    attempts = failed.details["download_attempts"]
    assert attempts > 1 and f"gave up after {attempts} attempts, {reason}" in failed.message
    assert ("the manifest expires at" in failed.message) == (reason == "expired")
    assert agent.slot.get() is None


def test_a_missing_artifact_fails_at_once(
    start_agent, artifact_server: ArtifactServer, operator: Operator, observer: Observer,
    digits_models: dict[str, Path],
) -> None:  # fmt: skip
    start_agent(artifact_server.base_url)
    real = operator.publish_artifact(digits_models["v1"])
    missing = ArtifactRef(sha256=real.sha256, size=real.size, url="sha256/no/such-file")
    m = operator.deploy(DEVICE, digits_models["v1"], artifact=missing)
    failed = final(observer, m.deployment_id)
    assert (failed.state, failed.error_code) == (S.FAILED, ArtifactError.code)
    assert (failed.details["gave_up"], failed.details["download_attempts"]) == ("permanent", 1)
    assert artifact_server.requests == [("/sha256/no/such-file", None)]
    # the retained status says why too, for a controller that never saw the event
    status = observer.wait_for(
        lambda s: s.kind == "status" and s.deployment_id == m.deployment_id and s.state is S.FAILED
    )
    assert status.error_code == ArtifactError.code and "such-file" in status.error


def test_a_deployment_sent_again_after_it_committed_is_answered_not_run(
    start_agent, artifact_server: ArtifactServer, operator: Operator, observer: Observer,
    digits_models: dict[str, Path],
) -> None:  # fmt: skip
    agent = start_agent(artifact_server.base_url)
    m = operator.manifest(DEVICE, digits_models["v1"])
    first = operator.deploy_payload(m)
    operator.send(DEVICE, first)
    committed = final(observer, m.deployment_id)
    assert committed.state is S.COMMITTED

    operator.send(DEVICE, first)  # a QoS 1 duplicate: ignored
    # the controller never heard the outcome: the same deployment, re-signed, a new sequence
    again = operator.manifest(DEVICE, digits_models["v1"], deployment_id=m.deployment_id)
    operator.send(DEVICE, operator.deploy_payload(again))
    repeated = observer.wait_for(
        lambda e: (
            e.kind == "event" and e.deployment_id == m.deployment_id and "repeated" in e.details
        )
    )
    assert (repeated.state, repeated.ok, repeated.error_code) == (S.COMMITTED, True, None)
    observer.wait_for(
        lambda s: s.kind == "status" and s.device_id == DEVICE and s.last_sequence == again.sequence
    )
    # downloaded and swapped once; the duplicate, handled before, said nothing
    assert [e.state for e in events(observer, m.deployment_id)] == [*DEPLOYED, S.COMMITTED]
    assert len(artifact_server.requests) == 1
    assert agent.state.last_sequence == again.sequence


def test_events_said_while_the_broker_is_down_arrive_after_it_returns(
    start_agent, broker: Broker, artifact_server: ArtifactServer, operator: Operator,
    observer: Observer, digits_models: dict[str, Path],
) -> None:  # fmt: skip
    """paho keeps the QoS 1 messages published while disconnected (up to the link's
    ``max_queued``) and sends them, in order, once it is back with a restarted broker.

    The agent reaches the broker through a gate, so it comes back only once the observer
    has: the harness broker's sessions do not outlive a restart when tests run as root, so
    the observer must be subscribed again before the agent's queue is flushed."""
    gate = Gate(broker.port).open()
    try:
        agent = start_agent(artifact_server.base_url, broker_url=f"mqtt://127.0.0.1:{gate.port}")
        gate.close()
        broker.stop()
        wait_until(lambda: not agent.link.connected, 10, "the agent noticing the broker gone")

        # a deployment delivered just before the broker went: all of it happens offline
        m = operator.manifest(DEVICE, digits_models["v1"])
        agent.inbox.put(inbound(operator.deploy_payload(m)))
        wait_until(
            lambda: agent.state.current is not None and agent.state.current.state is S.COMMITTED,
            30,
            "the offline deployment",
        )
        assert not agent.link.connected

        broker.start()  # the same port
        wait_until(lambda: _probe(operator, observer), 20, "the observer subscribed again")
        gate.open()  # now the agent may come back

        final(observer, m.deployment_id)
        assert [e.state for e in events(observer, m.deployment_id)] == DEPLOYED
        status = observer.wait_for(
            lambda s: s.kind == "status" and s.device_id == DEVICE and s.state is S.COMMITTED
        )
        assert status.active.deployment_id == m.deployment_id
    finally:
        gate.close()


def _probe(operator: Operator, observer: Observer) -> bool:
    """Whether an event published now reaches the observer (a probe lost while either
    was still reconnecting is simply sent again by the caller's bounded loop)."""
    since = observer.mark()
    probe = EventMessage(device_id="probe", deployment_id="probe", state=S.IDLE)
    operator.client.publish(shared.events_topic("probe"), shared.encode(probe), qos=1)
    try:
        observer.wait_for(lambda e: e.kind == "event" and e.device_id == "probe", 0.5, since)
    except TimeoutError:
        return False
    return True
