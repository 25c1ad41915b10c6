"""Faults injected for real: SIGKILL of the agent and of the broker, an agent that was away."""

from __future__ import annotations

import httpx
import pytest

from edgefleet.harness import wait_until, write_digits_model

pytestmark = pytest.mark.slow  # agent subprocesses, a killed broker


def test_sigkill_during_download_resumes_with_range(
    tmp_path, make_agent, operator, observer, artifact_server
):
    big = write_digits_model(tmp_path / "big.onnx", seed=1, pad_bytes=3_000_000)
    agent = make_agent("dev-dl")
    artifact_server.faults.bytes_per_s = 1_000_000  # about 3 s for the whole file
    m = operator.deploy("dev-dl", big)
    part = agent.state_dir / "downloads" / f"{m.artifact.sha256}.part"
    wait_until(
        lambda: part.exists() and part.stat().st_size > 300_000,
        30,
        "no partial download",
        every=0.02,
    )
    agent.kill()
    artifact_server.faults.bytes_per_s = None
    agent.start()
    observer.wait_event(m.deployment_id, "committed", timeout=60)
    ranged = [r for path, r in artifact_server.requests if path.endswith(m.artifact.sha256) and r]
    assert ranged, artifact_server.requests  # the restart resumed instead of starting over
    assert httpx.get(f"{agent.url}/v1/model").json()["deployment_id"] == m.deployment_id


# The agent's test-only hook holds it in a named state, where it is SIGKILLed.
TEST_MODE = {"EDGEFLEET_AGENT_TEST_MODE": "1"}
PAUSE_IN = "EDGEFLEET_AGENT_TEST_PAUSE_IN"

DEATH_CASES = [
    # killed in, command, end state after the restart, error code, which model serves then
    ("downloading", "deploy", "committed", None, "new"),
    ("verifying", "deploy", "committed", None, "new"),
    ("loading", "deploy", "failed", "crashed_while_loading", "last good"),
    ("testing", "deploy", "failed", "crashed_while_loading", "last good"),
    ("switching", "deploy", "committed", None, "new"),
    ("rolling_back", "rollback", "rolled_back", None, "last good"),
]


@pytest.mark.parametrize(
    ("killed_in", "command", "end", "code", "serves"), DEATH_CASES, ids=[c[0] for c in DEATH_CASES]
)
def test_sigkill_in_state_then_restart(
    tmp_path, make_agent, operator, observer, killed_in, command, end, code, serves
):
    """SIGKILL in each state the agent can be stopped in; the restart ends where it should."""
    device = f"dev-{killed_in.replace('_', '-')}"
    v1 = write_digits_model(tmp_path / "v1.onnx", seed=1)
    v2 = write_digits_model(tmp_path / "v2.onnx", seed=2)
    agent = make_agent(device, env=dict(TEST_MODE))
    m1 = operator.deploy(device, v1)
    observer.wait_event(m1.deployment_id, "committed")
    last_good = m1.deployment_id
    if command == "rollback":  # something to roll back from
        m2 = operator.deploy(device, v2, version="2.0.0")
        observer.wait_event(m2.deployment_id, "committed")

    agent.stop()
    agent.env[PAUSE_IN] = f"{killed_in}:60"
    agent.start()
    if command == "deploy":
        m2 = operator.deploy(device, v2, version="2.0.0")
        target = m2.deployment_id
    else:
        target, payload = operator.rollback_payload(device, undoes=m2.deployment_id)
        operator.send(device, payload)
    wait_until(
        lambda: (
            agent.state().get("current", {}).get("deployment_id") == target
            and agent.state()["current"]["state"] == killed_in
        ),
        30,
        f"the agent never paused in {killed_in}",
        every=0.02,
    )
    agent.kill()

    agent.env.pop(PAUSE_IN)
    agent.start()
    finished = observer.wait_event(target, end, timeout=60)
    assert finished.error_code == code
    agent.wait_serving()
    serving = httpx.get(f"{agent.url}/v1/model").json()["deployment_id"]
    assert serving == (m2.deployment_id if serves == "new" else last_good)
    # the device is not stuck: a later deployment goes through
    v3 = write_digits_model(tmp_path / "v3.onnx", seed=3)
    m3 = operator.deploy(device, v3, version="3.0.0")
    observer.wait_event(m3.deployment_id, "committed")


def test_pause_hook_is_ignored_without_test_mode(tmp_path, make_agent, operator, observer):
    """The hook is for tests only: without the test-mode switch a deployment runs straight on."""
    v1 = write_digits_model(tmp_path / "v1.onnx", seed=1)
    make_agent("dev-prod", env={PAUSE_IN: "loading:60"})
    m1 = operator.deploy("dev-prod", v1)
    observer.wait_event(m1.deployment_id, "committed", timeout=20)


def test_broker_killed_mid_deployment_completes(
    tmp_path, make_agent, operator, observer, broker, artifact_server
):
    big = write_digits_model(tmp_path / "big.onnx", seed=1, pad_bytes=2_000_000)
    agent = make_agent("dev-bk")
    artifact_server.faults.bytes_per_s = 1_000_000
    m = operator.deploy("dev-bk", big)
    observer.wait_event(m.deployment_id, "downloading")
    broker.restart(kill=True, down_for=1.0)
    observer.wait_event(m.deployment_id, "committed", timeout=60)
    observer.wait_serving("dev-bk", m.deployment_id)
    assert httpx.get(f"{agent.url}/v1/model").json()["deployment_id"] == m.deployment_id


def test_command_sent_while_agent_down_is_applied_on_return(
    tmp_path, make_agent, operator, observer
):
    v1 = write_digits_model(tmp_path / "v1.onnx", seed=1)
    agent = make_agent("dev-off")
    observer.wait_for(lambda s: s.kind == "status" and s.device_id == "dev-off" and s.online)
    agent.stop()
    observer.wait_for(lambda s: s.kind == "status" and s.device_id == "dev-off" and not s.online)
    m = operator.deploy("dev-off", v1)  # the broker keeps it in the agent's session
    agent.start()
    observer.wait_event(m.deployment_id, "committed")
    # applied exactly once
    assert [e.state for e in observer.events("dev-off", m.deployment_id)].count("committed") == 1


def test_last_will_marks_a_killed_agent_offline(make_agent, observer):
    agent = make_agent("dev-will", keepalive_s=1)
    observer.wait_for(lambda s: s.kind == "status" and s.device_id == "dev-will" and s.online)
    mark = observer.mark()
    agent.kill()
    status = observer.wait_for(
        lambda s: s.kind == "status" and s.device_id == "dev-will" and not s.online,
        timeout=15,
        since=mark,
    )
    assert status.online is False
