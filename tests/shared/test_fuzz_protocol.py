"""Property tests: whatever bytes arrive, the protocol's parsers answer with a message or a
``MessageError``, never another exception. Inputs are raw bytes, and valid messages and
documents with one part replaced by an arbitrary JSON value, removed, or added to.

Deterministic (derandomized, no example database) and sized to run in a few seconds."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet import shared
from edgefleet.shared import (
    ArtifactRef,
    BenchmarkOrder,
    DeployCommand,
    DeviceState,
    EventMessage,
    IOSignature,
    Manifest,
    ModelRef,
    PingCommand,
    RollbackOrder,
    RuntimeSettings,
    SmokeTest,
    StatusMessage,
    TelemetryMessage,
    TensorData,
    TensorSpec,
    TrustUpdate,
)
from edgefleet.shared.errors import MessageError

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NOW = datetime.now(UTC)
DEVICE = "rpi-1"
KEY = shared.generate_private_key()
KEYRING = shared.trusted_keyring([KEY.public_key()])
KEY_ID = shared.key_id(KEY.public_key())
SHA = "ab" * 32
MODEL = ModelRef(name="digits", version="1.0.0")
IO = IOSignature(
    inputs=[TensorSpec(name="input", dtype="float32", shape=[None, 64])],
    outputs=[TensorSpec(name="probs", dtype="float32", shape=[None, 10])],
)
SIGNED = {
    "device_id": DEVICE,
    "key_id": KEY_ID,
    "issued_at": NOW - timedelta(minutes=1),
    "expires_at": NOW + timedelta(hours=1),
}

DOCUMENTS: list[Any] = [
    Manifest(
        **SIGNED,
        deployment_id="dep-1",
        sequence=3,
        model=MODEL,
        artifact=ArtifactRef(sha256=SHA, size=10, url="sha256/x"),
        io=IO,
        smoke_test=SmokeTest(
            inputs={"input": TensorData.from_numpy(np.zeros((1, 64), np.float32))},
            outputs={"probs": TensorData.from_numpy(np.zeros((1, 10), np.float32))},
        ),
        runtime=RuntimeSettings(),
    ),
    RollbackOrder(**SIGNED, deployment_id="rb-1", sequence=4, undoes="dep-1"),
    BenchmarkOrder(
        **SIGNED,
        benchmark_id="b-1",
        model=MODEL,
        artifact=ArtifactRef(sha256=SHA, size=10, url="sha256/x"),
        io=IO,
        sample={"input": TensorData.from_numpy(np.zeros((1, 64), np.float32))},
        runs=3,
    ),
    TrustUpdate(
        **SIGNED,
        update_id="trust-1",
        version=2,
        keys=[shared.public_key_to_text(KEY.public_key())],
        revoked=["0123456789abcdef"],
    ),
]
MESSAGES: list[Any] = [
    DeployCommand(signed=shared.sign(shared.encode_document(DOCUMENTS[0]), KEY)),
    PingCommand(nonce="n"),
    StatusMessage(device_id=DEVICE, online=True, state=DeviceState.COMMITTED, last_sequence=3),
    EventMessage(device_id=DEVICE, deployment_id="dep-1", state=DeviceState.FAILED, ok=False),
    TelemetryMessage(device_id=DEVICE, interval_s=10.0, models=[]),
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", "2030-01-01T00:00:00Z", "x" * 5000, "deploy", "ab" * 32])
)
json_values = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5)
    ),
    max_leaves=20,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a JSON value: dict keys and list indices."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid payload with one place replaced by anything, removed, or given a new key."""
    doc = json.loads(draw(st.sampled_from(seeds)))
    path = draw(st.sampled_from(_paths(doc)))
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if not path:
        doc = draw(json_values) if action == "replace" else doc
    else:
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(json_values)
    return json.dumps(doc).encode()


MESSAGE_SEEDS = [shared.encode(m) for m in MESSAGES]
DOCUMENT_SEEDS = [shared.encode_document(d) for d in DOCUMENTS]
payloads = st.binary(max_size=400) | mutated(MESSAGE_SEEDS)
documents = st.binary(max_size=400) | mutated(DOCUMENT_SEEDS)


@FUZZ
@given(payloads)
def test_decode_raises_only_message_error(payload: bytes) -> None:
    for now in (None, NOW):
        with contextlib.suppress(MessageError):
            shared.decode(payload, now=now)


@FUZZ
@given(documents)
def test_the_document_parser_raises_only_message_error(payload: bytes) -> None:
    try:
        doc = shared.parse_signed_document(payload)
    except MessageError:
        return
    blob = shared.sign(payload, KEY)
    with contextlib.suppress(MessageError):
        shared.check_document(doc, blob, device_id=DEVICE, last_sequence=2, now=NOW)
    if isinstance(doc, TrustUpdate):
        with contextlib.suppress(MessageError):
            shared.check_trust_update(doc, blob, device_id=DEVICE, version=1, now=NOW)


@FUZZ
@given(documents)
def test_the_agents_path_from_bytes_to_a_checked_document_raises_only_message_error(
    document: bytes,
) -> None:
    # signed documents, so the parser behind the signature check sees the fuzzed bytes
    payload = shared.encode(DeployCommand(signed=shared.sign(document, KEY)))
    try:
        command = shared.decode(payload)
        assert isinstance(command, DeployCommand)
        doc = shared.parse_signed_document(shared.verify(command.signed, KEYRING))
        shared.check_document(doc, command.signed, device_id=DEVICE, last_sequence=0, now=NOW)
    except MessageError:
        pass


@FUZZ
@given(st.dictionaries(st.sampled_from(["key_id", "payload", "signature"]), json_values))
def test_a_fuzzed_signature_envelope_raises_only_message_error(signed: dict[str, Any]) -> None:
    envelope = json.loads(MESSAGE_SEEDS[0])
    envelope["signed"].update(signed)
    try:
        command = shared.decode(json.dumps(envelope).encode())
        assert isinstance(command, DeployCommand)
        shared.verify(command.signed, KEYRING)
    except MessageError:
        pass


@FUZZ
@given(st.integers(min_value=1, max_value=200_000), st.sampled_from([b"[", b"{", b'{"a":']))
def test_deep_nesting_is_a_message_error(depth: int, opener: bytes) -> None:
    for parse in (shared.decode, shared.parse_signed_document):
        with contextlib.suppress(MessageError):
            parse(opener * depth)
