"""Every rejection of DESIGN §4: refused with its event, the old model still serving."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from edgefleet import shared
from edgefleet.harness import digits, digits_model, infer_digits, smoke_sample, write_digits_model
from edgefleet.shared import ArtifactRef, IOSignature, TensorSpec

pytestmark = pytest.mark.slow  # agent subprocesses


def _other_key_same_id(operator, manifest):
    """Signed by a stranger who claims the operator's key id."""
    stranger = shared.generate_private_key()
    blob = shared.sign(shared.encode_document(manifest), stranger)
    forged = blob.model_copy(update={"key_id": operator.key_id})
    return shared.encode(shared.DeployCommand(signed=forged))


def _unknown_key(operator, manifest):
    stranger = shared.generate_private_key()
    doc = manifest.model_copy(update={"key_id": shared.key_id(stranger.public_key())})
    return operator.deploy_payload(doc, key=stranger)


def _corrupt_onnx(tmp: Path) -> Path:
    path = tmp / "corrupt.onnx"
    path.write_bytes(os.urandom(4096))
    return path


def _external_data(tmp: Path) -> Path:
    """A valid model whose weights live in a side file (w.bin) next to it."""
    path = tmp / "external.onnx"
    onnx.save_model(
        digits_model(seed=3),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    return path


# name, how to build the command (operator, tmp, good model path) -> payload, expected event
CASES = {
    "bad signature": ("rejected", "bad_signature"),
    "unknown key": ("rejected", "unknown_key"),
    "other device": ("rejected", "wrong_device"),
    "expired": ("rejected", "expired"),
    "replayed sequence": ("rejected", "replayed_sequence"),
    "wrong hash": ("failed", "checksum_mismatch"),
    "stream longer than declared": ("failed", "size_exceeded"),
    "corrupt onnx": ("failed", "model_load_failed"),
    "smoke-test mismatch": ("failed", "smoke_test_failed"),
    "external data": ("failed", "external_data"),
    "wrong io signature": ("failed", "io_signature_mismatch"),
}


def build(case: str, operator, tmp: Path, device: str):
    good = write_digits_model(tmp / "good.onnx", seed=3)
    other = write_digits_model(tmp / "other.onnx", seed=4)
    m = operator.manifest
    if case == "bad signature":
        return _other_key_same_id(operator, m(device, good))
    if case == "unknown key":
        return _unknown_key(operator, m(device, good))
    if case == "other device":
        return operator.deploy_payload(m("someone-else", good))
    if case == "expired":
        return operator.deploy_payload(m(device, good, expires_in=-5))
    if case == "replayed sequence":
        return operator.deploy_payload(m(device, good, sequence=1))
    if case == "wrong hash":
        real = operator.publish_artifact(good)
        fake = ArtifactRef(
            sha256=shared.sha256_bytes(b"something else"), size=real.size, url=real.url
        )
        return operator.deploy_payload(m(device, good, artifact=fake))
    if case == "stream longer than declared":
        real = operator.publish_artifact(good)
        short = ArtifactRef(sha256=real.sha256, size=real.size - 100, url=real.url)
        return operator.deploy_payload(m(device, good, artifact=short))
    if case == "corrupt onnx":
        return operator.deploy_payload(m(device, _corrupt_onnx(tmp), smoke=smoke_sample(good)))
    if case == "smoke-test mismatch":
        return operator.deploy_payload(m(device, good, smoke=smoke_sample(other)))
    if case == "external data":
        return operator.deploy_payload(m(device, _external_data(tmp), smoke=smoke_sample(good)))
    if case == "wrong io signature":
        io = IOSignature(
            inputs=[TensorSpec(name="pixels", dtype="float32", shape=[None, 64])],
            outputs=[TensorSpec(name="probs", dtype="float32", shape=[None, 10])],
        )
        return operator.deploy_payload(m(device, good, io=io))
    raise AssertionError(case)


@pytest.fixture
def serving_v1(tmp_path, make_agent, operator, observer):
    v1 = write_digits_model(tmp_path / "v1.onnx", seed=1)
    agent = make_agent("dev-r")
    m1 = operator.deploy("dev-r", v1, version="1.0.0")
    observer.wait_event(m1.deployment_id, "committed")
    return agent, m1


def test_every_rejection_keeps_the_old_model(tmp_path, serving_v1, operator, observer):
    agent, m1 = serving_v1
    x, _ = digits()
    before = np.asarray(infer_digits(agent.url, x[:5])["outputs"]["probs"])
    for case, (state, code) in CASES.items():
        work = tmp_path / case.replace(" ", "_")
        work.mkdir()
        mark = observer.mark()
        operator.send("dev-r", build(case, operator, work, "dev-r"))
        event = observer.wait_for(
            lambda e: e.kind == "event" and e.device_id == "dev-r" and not e.ok,
            timeout=30,
            since=mark,
        )
        assert (event.state, event.error_code) == (state, code), f"{case}: {event}"
        assert event.message, case
        meta = httpx.get(f"{agent.url}/v1/model").json()
        assert meta["deployment_id"] == m1.deployment_id, case
        after = np.asarray(infer_digits(agent.url, x[:5])["outputs"]["probs"])
        np.testing.assert_allclose(after, before)
    # nothing half-done was left behind: only the serving model is on disk
    assert [p.name for p in (agent.state_dir / "models").iterdir()] == [
        f"{m1.artifact.sha256}.onnx"
    ]
    assert list((agent.state_dir / "downloads").iterdir()) == []


def test_garbage_on_the_command_topic_is_reported_and_survived(
    tmp_path, serving_v1, operator, observer
):
    agent, _m1 = serving_v1
    garbage = [
        b"not json at all",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"schema": 1, "kind": "deploy"}',
        b'{"schema": 7, "kind": "ping"}',
        b'{"schema": 1, "kind": "status", "device_id": "x", "online": true}',
        b'{"schema": 1, "kind": "deploy",'
        b' "signed": {"key_id": "k", "payload": "!!", "signature": "x"}}',
        b"{" + b" " * (2 << 20) + b"}",
    ]
    seen = len(observer.events("dev-r"))
    for payload in garbage:
        operator.send("dev-r", payload)
    observer.wait_for(lambda _: len(observer.events("dev-r")) >= seen + len(garbage), timeout=30)
    rejected = observer.events("dev-r")[seen:]
    assert all(e.state == "rejected" and not e.ok and e.message for e in rejected), rejected
    assert {e.error_code for e in rejected} <= {"bad_message", "bad_signature", "unknown_key"}
    # the agent is alive, still serving, and still takes a valid deployment
    assert agent.proc.poll() is None
    v2 = write_digits_model(tmp_path / "v2.onnx", seed=2)
    m2 = operator.deploy("dev-r", v2, version="2.0.0")
    observer.wait_event(m2.deployment_id, "committed")
    assert "Traceback" not in agent.log_text()
