"""Typed, versioned MQTT payloads: encode/decode round trips and what decode refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edgefleet.shared import (
    MAX_MESSAGE_BYTES,
    N_BUCKETS,
    SCHEMA_VERSION,
    BenchmarkCommand,
    DeployCommand,
    DeviceState,
    EventMessage,
    LatencyHistogram,
    ModelRef,
    ModelStats,
    PingCommand,
    RollbackCommand,
    ServingModel,
    StatusMessage,
    SystemStats,
    TelemetryMessage,
    decode,
    encode,
    sign,
)
from edgefleet.shared.errors import MessageError

SENT = datetime(2030, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
MODEL = ModelRef(name="digits", version="1.2.0")


def _histogram_counts() -> list[int]:
    hist = LatencyHistogram()
    for ms in (0.3, 1.2, 1.3, 4.0, 250.0, 10**6):
        hist.record(ms)
    return hist.counts


def _messages(key: Ed25519PrivateKey) -> list[Any]:
    blob = sign(b'{"kind":"deploy"}', key)
    serving = ServingModel(model=MODEL, deployment_id="dep-1", sha256="ab" * 32)
    return [
        DeployCommand(signed=blob, sent_at=SENT),
        RollbackCommand(signed=blob, sent_at=SENT),
        BenchmarkCommand(signed=blob, sent_at=SENT),
        PingCommand(nonce="n-1", sent_at=SENT),
        StatusMessage(
            device_id="rpi-1",
            online=True,
            agent_version="0.1.0",
            profile="rpi4",
            state=DeviceState.COMMITTED,
            deployment_id="dep-2",
            active=serving,
            previous=serving.model_copy(update={"deployment_id": "dep-0"}),
            last_sequence=12,
            sent_at=SENT,
        ),
        StatusMessage(device_id="rpi-1", online=False, sent_at=SENT),  # the last will
        EventMessage(
            device_id="rpi-1",
            deployment_id="dep-2",
            state=DeviceState.FAILED,
            ok=False,
            error_code="checksum_mismatch",
            message="sha256 differs",
            timings_ms={"download": 812.5, "verify": 3.25},
            details={"bytes": 1234, "url": "m.onnx", "ratio": 0.5, "none": None},
            sent_at=SENT,
        ),
        TelemetryMessage(
            device_id="rpi-1",
            interval_s=10.0,
            models=[
                ModelStats(
                    model=MODEL,
                    deployment_id="dep-2",
                    requests=6,
                    errors=1,
                    latency_counts=_histogram_counts(),
                    p50_ms=1.3,
                    p95_ms=250.0,
                    p99_ms=None,
                )
            ],
            system=SystemStats(cpu_percent=12.5, memory_used_bytes=10**9, temperature_c=51.0),
            sent_at=SENT,
        ),
    ]


def _kinds() -> list[str]:
    return ["deploy", "rollback", "benchmark", "ping", "status", "status", "event", "telemetry"]


@pytest.fixture(params=range(len(_kinds())), ids=lambda i: f"{i}-{_kinds()[i]}")
def message(request: pytest.FixtureRequest, private_key: Ed25519PrivateKey) -> Any:
    return _messages(private_key)[request.param]


def test_round_trip(message: Any) -> None:
    decoded = decode(encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


def test_json_has_schema_and_kind(message: Any) -> None:
    raw = json.loads(encode(message))
    assert raw["schema"] == SCHEMA_VERSION == 1
    assert raw["kind"] == message.kind
    assert "schema_version" not in raw


def test_telemetry_histogram_survives(private_key: Ed25519PrivateKey) -> None:
    telemetry = _messages(private_key)[-1]
    decoded = decode(encode(telemetry))
    assert isinstance(decoded, TelemetryMessage)
    counts = decoded.models[0].latency_counts
    assert len(counts) == N_BUCKETS
    assert LatencyHistogram(counts).total == 6


def test_sent_at_defaults_to_now() -> None:
    before = datetime.now(UTC)
    ping = PingCommand()
    assert before <= ping.sent_at <= datetime.now(UTC)


def test_schema_accepted_by_field_name_and_alias() -> None:
    assert PingCommand(schema=1).schema_version == 1  # type: ignore[call-arg]
    assert PingCommand(schema_version=1).schema_version == 1


def test_model_stats_needs_n_buckets() -> None:
    for n in (0, N_BUCKETS - 1, N_BUCKETS + 1):
        with pytest.raises(ValidationError):
            ModelStats(model=MODEL, deployment_id="d", latency_counts=[0] * n)


# -- what decode refuses -------------------------------------------------------------

PING = {"schema": 1, "kind": "ping", "nonce": "x"}


def _bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(b"not json", "not JSON", id="not-json"),
        pytest.param(b"", "not JSON", id="empty"),
        pytest.param(b'{"schema": 1, "kind": "ping"', "not JSON", id="truncated"),
        pytest.param(b'{"schema": 1, "kind": "\xff\xfe"}', "not JSON", id="bad-utf8"),
        pytest.param(b"[" * 100_000, "not JSON", id="deeply-nested"),
        pytest.param(b"1" * 5_000, "not JSON", id="huge-integer"),
        pytest.param(_bytes([PING]), "not a JSON object", id="list"),
        pytest.param(b'"ping"', "not a JSON object", id="string"),
        pytest.param(b"null", "not a JSON object", id="null"),
        pytest.param(_bytes({"kind": "ping"}), "unsupported schema None", id="no-schema"),
        pytest.param(_bytes({**PING, "schema": 2}), "unsupported schema 2", id="schema-2"),
        pytest.param(_bytes({**PING, "schema": "1"}), "unsupported schema '1'", id="schema-str"),
        pytest.param(_bytes({**PING, "schema": True}), "unsupported schema True", id="schema-bool"),
        pytest.param(_bytes({**PING, "schema": 1.0}), "unsupported schema 1.0", id="schema-float"),
        pytest.param(_bytes({**PING, "kind": "reboot"}), "reboot", id="unknown-kind"),
        pytest.param(_bytes({"schema": 1}), "kind", id="no-kind"),
        pytest.param(
            _bytes({"schema": 1, "kind": "status", "online": True}),
            "invalid status: status.device_id: Field required",
            id="missing-field",
        ),
        pytest.param(
            _bytes({"schema": 1, "kind": "status", "device_id": "d", "online": "maybe"}),
            "invalid status: status.online",
            id="wrong-type",
        ),
        pytest.param(
            _bytes({"schema": 1, "kind": "deploy", "signed": {"key_id": "k"}}),
            "invalid deploy: deploy.signed.payload: Field required",
            id="incomplete-blob",
        ),
    ],
)
def test_decode_rejects(payload: bytes, expected: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(payload)
    assert expected in str(info.value)
    assert info.value.code == "bad_message"


def test_decode_rejects_oversized_payload() -> None:
    payload = _bytes({**PING, "nonce": "x" * MAX_MESSAGE_BYTES})
    assert len(payload) > MAX_MESSAGE_BYTES
    with pytest.raises(MessageError, match=f"exceeds {MAX_MESSAGE_BYTES}") as info:
        decode(payload)
    assert str(len(payload)) in str(info.value)


def test_decode_accepts_payload_at_the_limit() -> None:
    head = _bytes({**PING, "nonce": ""})
    payload = _bytes({**PING, "nonce": "x" * (MAX_MESSAGE_BYTES - len(head))})
    assert len(payload) == MAX_MESSAGE_BYTES
    assert isinstance(decode(payload), PingCommand)


def test_unknown_fields_are_ignored(private_key: Ed25519PrivateKey) -> None:
    status = _messages(private_key)[4]
    raw = json.loads(encode(status))
    raw["firmware"] = "2031.1"
    raw["active"]["extra"] = {"nested": [1, 2]}
    decoded = decode(_bytes(raw))
    assert decoded == status
    assert not hasattr(decoded, "firmware")


def test_unknown_fields_in_telemetry_are_ignored(private_key: Ed25519PrivateKey) -> None:
    telemetry = _messages(private_key)[-1]
    raw = json.loads(encode(telemetry))
    raw["models"][0]["gpu_ms"] = 3.0
    raw["system"]["fan_rpm"] = 1200
    assert decode(_bytes(raw)) == telemetry


def test_decoded_messages_are_frozen() -> None:
    ping = decode(_bytes(PING))
    with pytest.raises(ValidationError):
        ping.nonce = "y"  # type: ignore[misc]


def test_device_states_keep_their_wire_values() -> None:
    """The controller and older agents match these strings: they never change."""
    assert [s.value for s in DeviceState] == [
        "idle",
        "downloading",
        "verifying",
        "loading",
        "testing",
        "switching",
        "committed",
        "rolling_back",
        "rolled_back",
        "failed",
        "rejected",
        "benchmarking",
        "benchmarked",
        "benchmark_failed",
        "trust_updated",
    ]


def test_event_state_is_a_device_state_on_the_wire() -> None:
    event = EventMessage(device_id="rpi-1", deployment_id="d", state=DeviceState.ROLLED_BACK)
    assert json.loads(encode(event))["state"] == "rolled_back"
    decoded = decode(encode(event))
    assert isinstance(decoded, EventMessage)
    assert decoded.state is DeviceState.ROLLED_BACK


def test_unknown_event_state_is_refused() -> None:
    raw = json.loads(encode(EventMessage(device_id="rpi-1", deployment_id="d", state="failed")))
    raw["state"] = "dancing"
    with pytest.raises(MessageError):
        decode(json.dumps(raw).encode())
