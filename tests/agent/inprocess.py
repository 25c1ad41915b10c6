"""An agent in-process: a fake MQTT link that records, artifacts over httpx.MockTransport,
real ONNX models and a real state folder."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet import shared
from edgefleet.agent import Agent, AgentConfig, Inbound, Outbound
from edgefleet.agent._retry import DownloadRetry
from edgefleet.harness import DIGITS_IO, smoke_sample
from edgefleet.shared import (
    ArtifactRef,
    BenchmarkCommand,
    BenchmarkOrder,
    DeployCommand,
    EventMessage,
    Manifest,
    ModelRef,
    RollbackCommand,
    RollbackOrder,
    RuntimeSettings,
    StatusMessage,
    TrustCommand,
    TrustUpdate,
)

DEVICE = "dev-inproc"
BASE_URL = "http://artifacts.test/"


class FakeLink:
    """Stands in for the MQTT link in unit tests: records what the agent publishes."""

    def __init__(self) -> None:
        self.published: list[Outbound] = []
        self.on_message: Callable[[Inbound], None] | None = None
        self.stopped = False

    def start(
        self,
        *,
        on_message: Callable[[Inbound], None],
        birth: Callable[[], Outbound],
        will: Callable[[], Outbound],
    ) -> None:
        self.on_message = on_message
        will()
        self.publish(birth())

    def publish(self, message: Outbound) -> None:
        self.published.append(message)

    def stop(self, farewell: Outbound | None = None) -> None:
        self.stopped = True

    def messages(self) -> list[Any]:
        return [shared.decode(m.payload) for m in list(self.published)]

    def events(self, deployment_id: str | None = None) -> list[EventMessage]:
        return [
            m
            for m in self.messages()
            if isinstance(m, EventMessage)
            and (deployment_id is None or m.deployment_id == deployment_id)
        ]

    def statuses(self) -> list[StatusMessage]:
        return [m for m in self.messages() if isinstance(m, StatusMessage)]


@dataclass
class Artifacts:
    """Artifact bodies by URL path, served through httpx.MockTransport."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    down: bool = False  # every request fails to connect
    unreachable: set[str] = field(default_factory=set)  # paths whose requests fail so

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if self.down or request.url.path.lstrip("/") in self.unreachable:
            raise httpx.ConnectError("connection refused", request=request)
        body = self.bodies.get(request.url.path.lstrip("/"))
        if body is None:
            return httpx.Response(404)
        return httpx.Response(200, content=body)


class TopOfWindow(random.Random):
    """Full jitter that always draws the top of the window, so a test knows each wait."""

    def uniform(self, a: float, b: float) -> float:
        return b


def fixed_waits(seconds: float) -> DownloadRetry:
    """A retry policy whose every backoff lasts ``seconds``."""
    return DownloadRetry(first_s=seconds, max_s=seconds, rng=TopOfWindow())


class Fleet:
    """Signs documents for one in-process agent and feeds them to it."""

    def __init__(self, root: Path, models: dict[str, Path]) -> None:
        self.root = root
        self.models = models
        self.key = shared.generate_private_key()
        self.artifacts = Artifacts()
        self.link = FakeLink()
        self.sequence = 0
        self.trust_version = 0
        self.deployed: list[str] = []  # deployment ids of the manifests sent, in order
        self.config = AgentConfig(
            device_id=DEVICE,
            broker_url="mqtt://broker.test:1883",
            artifact_base_url=BASE_URL,
            trusted_keys=(shared.public_key_to_text(self.key.public_key()),),
            state_dir=root / "state",
            inference_port=0,
            telemetry_interval_s=0.05,
            download_attempts=2,
            download_retry_s=0.0,
        )
        self._agents: list[Agent] = []

    def agent(self, **seams: Any) -> Agent:
        """A new agent on the same state folder (a restart), with fresh I/O objects;
        ``seams`` go to :class:`Agent` as they are (``retry=``)."""
        http = httpx.Client(
            base_url=BASE_URL, transport=httpx.MockTransport(self.artifacts.handler)
        )
        self.link = FakeLink()
        agent = Agent(self.config, http=http, link=self.link, **seams)
        self._agents.append(agent)
        return agent

    def artifact(self, model: str, body: bytes | None = None) -> ArtifactRef:
        """Publish a model; ``body`` replaces what the server sends for it (a fault)."""
        data = self.models[model].read_bytes()
        digest = shared.sha256_bytes(data)
        url = f"sha256/{digest}"
        self.artifacts.bodies[url] = data if body is None else body
        return ArtifactRef(sha256=digest, size=len(data), url=url)

    def _signed(self, **fields: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        self.sequence += 1
        base = dict(
            device_id=DEVICE,
            sequence=self.sequence,
            issued_at=now,
            expires_at=now + timedelta(hours=1),
            key_id=shared.key_id(fields.pop("signer", self.key).public_key()),
        )
        return {**base, **fields}

    def manifest(
        self,
        model: str,
        *,
        body: bytes | None = None,
        signer: Ed25519PrivateKey | None = None,
        **changes: Any,
    ) -> Manifest:
        fields = self._signed(
            signer=signer or self.key,
            deployment_id=f"dep-{model}-{uuid.uuid4().hex[:6]}",
            model=ModelRef(name="digits", version=f"1.0.{model[-1]}"),
            artifact=self.artifact(model, body),
            io=DIGITS_IO,
            smoke_test=smoke_sample(self.models[model]),
            runtime=RuntimeSettings(intra_op_threads=1, benchmark_runs=3),
        )
        return Manifest(**{**fields, **changes})

    def deploy(
        self, model: str, *, signer: Ed25519PrivateKey | None = None, **kw: Any
    ) -> tuple[str, bytes]:
        signer = signer or self.key
        manifest = self.manifest(model, signer=signer, **kw)
        self.deployed.append(manifest.deployment_id)
        blob = shared.sign(shared.encode_document(manifest), signer)
        return manifest.deployment_id, shared.encode(DeployCommand(signed=blob))

    def rollback(self, undoes: str | None = None, **changes: Any) -> tuple[str, bytes]:
        """A rollback of ``undoes``: by default the deployment the newest agent serves now
        (a made-up id when it serves nothing)."""
        if undoes is None:
            active = self._agents[-1].state.active if self._agents else None
            undoes = active.deployment_id if active is not None else "dep-nothing-served"
        fields = self._signed(deployment_id=f"rb-{uuid.uuid4().hex[:6]}", undoes=undoes)
        order = RollbackOrder(**{**fields, **changes})
        blob = shared.sign(shared.encode_document(order), self.key)
        return order.deployment_id, shared.encode(RollbackCommand(signed=blob))

    def benchmark(
        self, model: str, *, body: bytes | None = None, **changes: Any
    ) -> tuple[str, bytes]:
        fields = self._signed(
            benchmark_id=f"bench-{uuid.uuid4().hex[:6]}",
            model=ModelRef(name="digits", version="9.9.9"),
            artifact=self.artifact(model, body),
            io=DIGITS_IO,
            sample=smoke_sample(self.models[model]).inputs,
            runs=3,
        )
        fields.pop("sequence")
        order = BenchmarkOrder(**{**fields, **changes})
        blob = shared.sign(shared.encode_document(order), self.key)
        return order.benchmark_id, shared.encode(BenchmarkCommand(signed=blob))

    def trust(
        self,
        keys: list[Ed25519PrivateKey],
        *,
        signer: Ed25519PrivateKey | None = None,
        revoked: list[Ed25519PrivateKey] = (),  # type: ignore[assignment]
        **changes: Any,
    ) -> tuple[str, bytes]:
        """A trust update: the next version, trusting ``keys`` and revoking ``revoked``."""
        signer = signer or self.key
        self.trust_version += 1
        fields = self._signed(signer=signer)
        fields.pop("sequence")
        fields.update(
            update_id=f"trust-{uuid.uuid4().hex[:6]}",
            version=self.trust_version,
            keys=[shared.public_key_to_text(k.public_key()) for k in keys],
            revoked=[shared.key_id(k.public_key()) for k in revoked],
        )
        update = TrustUpdate(**{**fields, **changes})
        blob = shared.sign(shared.encode_document(update), signer)
        return update.update_id, shared.encode(TrustCommand(signed=blob))

    def close(self) -> None:
        for agent in self._agents:
            agent.http.close()


def inbound(payload: bytes, acks: list[bytes] | None = None) -> Inbound:
    return Inbound(
        topic=shared.command_topic(DEVICE),
        payload=payload,
        ack=lambda: acks.append(payload) if acks is not None else None,
    )
