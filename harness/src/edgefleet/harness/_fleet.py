"""The controller's part, played by tests: sign and publish commands, watch what agents say,
and run agents as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet import shared
from edgefleet.shared import (
    ArtifactRef,
    BenchmarkCommand,
    BenchmarkOrder,
    DeployCommand,
    IOSignature,
    Manifest,
    ModelRef,
    RollbackCommand,
    RollbackOrder,
    RuntimeSettings,
    SmokeTest,
    TensorData,
    TensorSpec,
)

from ._broker import free_port, wait_port
from ._models import digits


def smoke_sample(model_path: Path, n: int = 4) -> SmokeTest:
    x = digits()[0][:n]
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (probs,) = sess.run(["probs"], {"input": x})
    return SmokeTest(
        inputs={"input": TensorData.from_numpy(x)},
        outputs={"probs": TensorData.from_numpy(probs)},
    )


DIGITS_IO = IOSignature(
    inputs=[TensorSpec(name="input", dtype="float32", shape=[None, 64])],
    outputs=[TensorSpec(name="probs", dtype="float32", shape=[None, 10])],
)


class Operator:
    """Signs documents with its own key and keeps a sequence number per device."""

    def __init__(self, broker_url: str, artifact_root: Path) -> None:
        self.key = shared.generate_private_key()
        self.public_text = shared.public_key_to_text(self.key.public_key())
        self.key_id = shared.key_id(self.key.public_key())
        self.sequences: dict[str, int] = {}
        self.artifact_root = artifact_root
        self.client = _mqtt_client(broker_url, f"operator-{uuid.uuid4().hex[:6]}")

    def next_sequence(self, device_id: str) -> int:
        self.sequences[device_id] = self.sequences.get(device_id, 0) + 1
        return self.sequences[device_id]

    def publish_artifact(self, model_path: Path) -> ArtifactRef:
        data = model_path.read_bytes()
        digest = shared.sha256_bytes(data)
        rel = f"sha256/{digest[:2]}/{digest}"
        (self.artifact_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.artifact_root / rel).write_bytes(data)
        return ArtifactRef(sha256=digest, size=len(data), url=rel)

    def manifest(
        self,
        device_id: str,
        model_path: Path,
        *,
        version: str = "1.0.0",
        name: str = "digits",
        sequence: int | None = None,
        deployment_id: str | None = None,
        expires_in: float = 3600,
        smoke: SmokeTest | None = None,
        artifact: ArtifactRef | None = None,
        io: IOSignature = DIGITS_IO,
        **changes: Any,
    ) -> Manifest:
        now = datetime.now(UTC)
        fields: dict[str, Any] = dict(
            deployment_id=deployment_id or f"dep-{uuid.uuid4().hex[:10]}",
            device_id=device_id,
            sequence=sequence if sequence is not None else self.next_sequence(device_id),
            issued_at=now,
            expires_at=now + timedelta(seconds=expires_in),
            key_id=self.key_id,
            model=ModelRef(name=name, version=version),
            artifact=artifact or self.publish_artifact(model_path),
            io=io,
            smoke_test=smoke or smoke_sample(model_path),
            runtime=RuntimeSettings(intra_op_threads=1, benchmark_runs=10),
        )
        fields.update(changes)
        return Manifest(**fields)

    def deploy_payload(self, manifest: Manifest, key: Any = None) -> bytes:
        blob = shared.sign(shared.encode_document(manifest), key or self.key)
        return shared.encode(DeployCommand(signed=blob))

    def rollback_payload(self, device_id: str, *, undoes: str) -> tuple[str, bytes]:
        """A signed rollback order of the deployment ``undoes`` (what the device must serve)."""
        now = datetime.now(UTC)
        order = RollbackOrder(
            deployment_id=f"rb-{uuid.uuid4().hex[:10]}",
            device_id=device_id,
            sequence=self.next_sequence(device_id),
            undoes=undoes,
            issued_at=now,
            expires_at=now + timedelta(hours=1),
            key_id=self.key_id,
            reason="test",
        )
        blob = shared.sign(shared.encode_document(order), self.key)
        return order.deployment_id, shared.encode(RollbackCommand(signed=blob))

    def benchmark_payload(
        self, device_id: str, model_path: Path, runs: int = 20
    ) -> tuple[str, bytes]:
        now = datetime.now(UTC)
        order = BenchmarkOrder(
            benchmark_id=f"bench-{uuid.uuid4().hex[:10]}",
            device_id=device_id,
            issued_at=now,
            expires_at=now + timedelta(hours=1),
            key_id=self.key_id,
            model=ModelRef(name="digits", version="candidate", variant="int8"),
            artifact=self.publish_artifact(model_path),
            io=DIGITS_IO,
            sample=smoke_sample(model_path, n=1).inputs,
            runs=runs,
        )
        blob = shared.sign(shared.encode_document(order), self.key)
        return order.benchmark_id, shared.encode(BenchmarkCommand(signed=blob))

    def send(self, device_id: str, payload: bytes) -> None:
        info = self.client.publish(shared.command_topic(device_id), payload, qos=1)
        info.wait_for_publish(10)

    def deploy(self, device_id: str, model_path: Path, **kw: Any) -> Manifest:
        manifest = self.manifest(device_id, model_path, **kw)
        self.send(device_id, self.deploy_payload(manifest))
        return manifest

    def close(self) -> None:
        # disconnect first: loop_stop() on a live connection waits out paho's select timeout
        self.client.disconnect()
        self.client.loop_stop()


def _mqtt_client(broker_url: str, client_id: str) -> mqtt.Client:
    port = int(broker_url.rsplit(":", 1)[1])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # paho sleeps a float fine
    client.connect("127.0.0.1", port, clean_start=True)
    client.loop_start()
    return client


class Observer:
    """Collects every status, event and telemetry message of all devices."""

    def __init__(self, broker_url: str) -> None:
        self.messages: list[tuple[str, Any]] = []
        self.lock = threading.Condition()
        port = int(broker_url.rsplit(":", 1)[1])
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"observer-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        # a persistent session, so nothing is missed while the broker restarts
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()

    def status(self, device_id: str) -> Any:
        found = self.statuses(device_id)
        return found[-1] if found else None

    def wait_serving(
        self, device_id: str, deployment_id: str, timeout: float = 30.0, since: int = 0
    ) -> Any:
        return self.wait_for(
            lambda m: (
                m.kind == "status"
                and m.device_id == device_id
                and m.online
                and m.active is not None
                and m.active.deployment_id == deployment_id
            ),
            timeout,
            since,
        )

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        for ch in (shared.Channel.STATUS, shared.Channel.EVENTS, shared.Channel.TELEMETRY):
            client.subscribe(shared.fleet_topic(ch), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            decoded = shared.decode(bytes(msg.payload))
        except shared.errors.MessageError:
            return
        with self.lock:
            self.messages.append((msg.topic, decoded))
            self.lock.notify_all()

    def events(self, device_id: str | None = None, deployment_id: str | None = None) -> list[Any]:
        with self.lock:
            return [
                m
                for _, m in self.messages
                if m.kind == "event"
                and (device_id is None or m.device_id == device_id)
                and (deployment_id is None or m.deployment_id == deployment_id)
            ]

    def statuses(self, device_id: str) -> list[Any]:
        with self.lock:
            return [m for _, m in self.messages if m.kind == "status" and m.device_id == device_id]

    def mark(self) -> int:
        """A position in the message log; ``wait_for(since=mark)`` looks only past it."""
        with self.lock:
            return len(self.messages)

    def wait_for(
        self, predicate: Callable[[Any], bool], timeout: float = 30.0, since: int = 0
    ) -> Any:
        deadline = time.monotonic() + timeout
        seen = since
        with self.lock:
            while True:
                for m in self.messages[seen:]:
                    if predicate(m[1]):
                        return m[1]
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [
                        (getattr(m, "state", m.kind), getattr(m, "error_code", None))
                        for _, m in self.messages[-15:]
                    ]
                    raise TimeoutError(f"no matching message in {timeout}s; last: {kinds}")
                self.lock.wait(left)

    def wait_event(self, deployment_id: str, state: str, timeout: float = 30.0) -> Any:
        return self.wait_for(
            lambda m: m.kind == "event" and m.deployment_id == deployment_id and m.state == state,
            timeout,
        )

    def close(self) -> None:
        # disconnect first: loop_stop() on a live connection waits out paho's select timeout
        self.client.disconnect()
        self.client.loop_stop()


class AgentProcess:
    """``edgefleet-agent run`` as a subprocess with its own config and state folder."""

    def __init__(
        self,
        workdir: Path,
        device_id: str,
        broker_url: str,
        artifact_base_url: str,
        trusted_keys: list[str],
        profile: str = "x86-edge",
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.device_id = device_id
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = workdir / "state"
        self.inference_port = settings.pop("inference_port", None) or free_port()
        self.config = workdir / "agent.toml"
        values: dict[str, Any] = {
            "device_id": device_id,
            "profile": profile,
            "broker_url": broker_url,
            "artifact_base_url": artifact_base_url,
            "trusted_keys": trusted_keys,
            "state_dir": str(self.state_dir),
            "inference_port": self.inference_port,
            "telemetry_interval_s": 1.0,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 2.0,
            "download_timeout_s": 10.0,
            "download_retry_s": 0.2,
        }
        values.update(settings)
        self.config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in values.items()))
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "agent.log"

    def start(self) -> AgentProcess:
        self._logfh = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(self.config)],
            stdout=self._logfh,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        return self

    def wait_serving(self, timeout: float = 15.0) -> None:
        wait_port(self.inference_port, timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        code = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        elif self.proc:
            code = self.proc.returncode
        self.proc = None
        if getattr(self, "_logfh", None):
            self._logfh.close()
        return code

    def state(self) -> dict[str, Any]:
        path = self.state_dir / "state.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def infer_digits(url: str, rows: np.ndarray, client: Any = None) -> dict[str, Any]:
    import httpx

    c = client or httpx
    r = c.post(f"{url}/v1/infer", json={"inputs": {"input": rows.tolist()}}, timeout=10)
    r.raise_for_status()
    return r.json()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))
