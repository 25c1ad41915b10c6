"""On-device latency for ``compress --measure-on``: each candidate is put where the daemon's
artifact server hands it out, sent to the device as a signed benchmark order, and the device's
answer is read from its events topic.

The agent runs one command at a time, so the orders go one by one, each with its own timeout.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlmodel import col, delete, select

from edgefleet import shared
from edgefleet.shared import (
    ArtifactRef,
    BenchmarkCommand,
    BenchmarkOrder,
    DeviceState,
    EventMessage,
    IOSignature,
    ModelRef,
    SmokeTest,
    StatusMessage,
    TensorData,
    broker_endpoint,
)
from edgefleet.shared.errors import (
    ArtifactError,
    BenchmarkFailed,
    BrokerError,
    ChecksumMismatch,
    ConfigError,
    DeviceOffline,
    DownloadError,
    MessageError,
    NotFound,
    SizeExceeded,
)

from ..compress import REFERENCE, Candidate, Progress
from ..fleet import cli_broker_user, get_device
from ..home import DeviceProfile, Home
from ..mqtt import MqttLink, Received, Session
from ..registry import Artifact, ArtifactGrant, ArtifactStore, Device
from ._onnx import read_signature

log = logging.getLogger("edgefleet.controller.remote_measure")

STAGE = "on-device"
CONNECT_WAIT_S = 10.0
# A retained status comes right after the subscription is granted; none means never connected.
STATUS_WAIT_S = 3.0
# orders stay valid this long past the timeout, so a device clock a little ahead still takes them
CLOCK_SLACK_S = 60
_ARTIFACT_CODES = {e.code for e in (ArtifactError, DownloadError, ChecksumMismatch, SizeExceeded)}


class DeviceLink:
    """A short, clean MQTT session subscribed to one device's status and events, whose
    messages are decoded and queued for the caller."""

    def __init__(
        self, broker_url: str, device: str, prefix: str, *, tls_ca: str | None = None
    ) -> None:
        self.broker_url = broker_url
        self.device = device
        self.command_topic = shared.command_topic(device, prefix)
        self.inbox: queue.Queue[StatusMessage | EventMessage] = queue.Queue()
        endpoint = broker_endpoint(broker_url)
        if endpoint.username:  # the daemon's user has the daemon's session: never take it
            endpoint = replace(endpoint, username=cli_broker_user(endpoint.username))
        self._link = MqttLink(
            endpoint,
            # nothing to keep: the orders' answers are awaited now or never
            Session(client_id=f"edgefleet-compress-{uuid.uuid4().hex[:10]}"),
            subscriptions=[
                (shared.status_topic(device, prefix), 1),
                (shared.events_topic(device, prefix), 1),
            ],
            on_message=self._on_message,
            tls_ca=tls_ca,
        )

    def open(self) -> None:
        try:
            self._link.start(blocking=True)
            self._link.wait_ready(CONNECT_WAIT_S)
        except BrokerError as exc:
            hint = "set broker_url in config.toml or EDGEFLEET_BROKER_URL"
            if "authori" in str(exc).lower():
                hint = (
                    "the command line logs in as the controller's user with '-cli' appended: "
                    "run `edgefleet broker config` again and reload Mosquitto"
                )
            raise BrokerError(f"{exc} ({hint})") from exc

    def publish(self, payload: bytes) -> None:
        self._link.publish(self.command_topic, payload, timeout_s=CONNECT_WAIT_S)

    def next(self, timeout: float) -> StatusMessage | EventMessage | None:
        try:
            return self.inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def close(self) -> None:
        self._link.close()

    def _on_message(self, received: Received) -> None:  # paho's network thread
        try:
            message = shared.decode(received.payload)
        except MessageError as exc:
            log.warning("dropped a message on %s: %s", received.topic, exc)
            return
        if isinstance(message, StatusMessage | EventMessage) and message.device_id == self.device:
            self.inbox.put(message)


class DeviceBenchmarks:
    """``compress``'s ``measure`` for one device: called with the candidates, it returns each
    one's (p50 ms, p95 ms) there, or the device's reason for not measuring it.

    It remembers which files it added to the artifact store; ``discard`` removes them."""

    def __init__(
        self,
        home: Home,
        link: DeviceLink,
        profile: DeviceProfile,
        *,
        model: str,
        version: str,
        smoke_test: SmokeTest,
        runs: int,
        timeout_s: float,
        progress: Progress | None = None,
    ) -> None:
        self.home = home
        self.link = link
        self.device = link.device
        self.profile = profile
        self.model = model
        self.version = version
        self.smoke_test = smoke_test
        self.runs = runs
        self.timeout_s = timeout_s
        self.notify = progress or (lambda _stage, _done, _total: None)
        self.added: set[str] = set()  # sha256 of files this run put into the store
        self.grants: list[int] = []  # the device's grants this run's orders recorded

    def check_online(self) -> None:
        """Raise ``DeviceOffline`` unless the device's retained status says it is connected."""
        deadline = time.monotonic() + STATUS_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            message = self.link.next(left)
            if isinstance(message, StatusMessage):
                if message.online:
                    return
                raise DeviceOffline(f"device {self.device} is offline")
        raise DeviceOffline(f"device {self.device} is offline (it has never connected)")

    def __call__(self, candidates: list[Candidate]) -> dict[str, tuple[float, float] | str]:
        results: dict[str, tuple[float, float] | str] = {}
        self.notify(STAGE, 0, len(candidates))
        for done, candidate in enumerate(candidates, start=1):
            answer = results[candidate.name] = self._measure(candidate)
            if isinstance(answer, str) and candidate.name == REFERENCE:
                raise BenchmarkFailed(self._reference_failed(answer))
            self.notify(STAGE, done, len(candidates))
        return results

    def discard(self, keep: str | None = None) -> None:
        """Remove the files this run added, except ``keep`` and any a registry row names, and
        the grants its orders gave the device: the benchmarks are over (a variant deployed
        later is the device's through its deployment)."""
        with self.home.session(write=True) as session:
            named = {
                sha for sha in self.added if sha == keep or session.get(Artifact, sha) is not None
            }
            if self.grants:
                session.exec(delete(ArtifactGrant).where(col(ArtifactGrant.id).in_(self.grants)))
        self.grants.clear()
        for sha in self.added - named:
            self.home.store.path_of(sha).unlink(missing_ok=True)
        self.added.clear()

    # -- one candidate --------------------------------------------------------------

    def _measure(self, candidate: Candidate) -> tuple[float, float] | str:
        order = self._order(candidate)
        self._settle()
        blob = shared.sign(shared.encode_document(order), self.home.signing_key())
        self.link.publish(shared.encode(BenchmarkCommand(signed=blob)))
        log.info("sent benchmark %s of %s to %s", order.benchmark_id, candidate.name, self.device)
        return self._answer(order.benchmark_id, candidate.name)

    def _order(self, candidate: Candidate) -> BenchmarkOrder:
        io = read_signature(candidate.path)
        sha = shared.sha256_file(candidate.path)
        if sha not in self.home.store:
            self.added.add(sha)
        stored = self.home.store.put_file(candidate.path)
        now = datetime.now(UTC)
        expires_at = now + timedelta(seconds=self.timeout_s + CLOCK_SLACK_S)
        self._grant(stored.sha256, now, expires_at)
        key = self.home.signing_key()
        return BenchmarkOrder(
            benchmark_id=f"bench-{uuid.uuid4().hex[:12]}",
            device_id=self.device,
            issued_at=now,
            expires_at=expires_at,
            key_id=shared.key_id(key.public_key()),
            model=ModelRef(name=self.model, version=self.version, variant=candidate.name[:64]),
            artifact=ArtifactRef(
                sha256=stored.sha256,
                size=stored.size,
                url=ArtifactStore.relative_path(stored.sha256),
            ),
            io=io,
            sample=sample_for(self.smoke_test, io),
            runtime=self.profile.runtime,
            runs=self.runs,
        )

    def _grant(self, sha256: str, now: datetime, expires_at: datetime) -> None:
        """Let this device, and no other, fetch the candidate for as long as the order is
        valid (a device's token reads only what was sent to it); expired grants go."""
        with self.home.session(write=True) as session:
            device_id = session.exec(select(Device.id).where(Device.name == self.device)).first()
            if device_id is None:
                raise NotFound(f"device {self.device} was removed while measuring")
            session.exec(delete(ArtifactGrant).where(col(ArtifactGrant.expires_at) < now))
            grant = ArtifactGrant(
                device_id=device_id, artifact_sha256=sha256, expires_at=expires_at
            )
            session.add(grant)
            session.flush()
            assert grant.id is not None  # the flush gave it one
            self.grants.append(grant.id)

    def _settle(self) -> None:
        """Read what came while nobody waited (the local measurement can take minutes): the
        device's last word on being online counts, and an old rejection is not an answer."""
        offline = False
        while (message := self.link.next(0)) is not None:
            if isinstance(message, StatusMessage):
                offline = not message.online
        if offline:
            raise DeviceOffline(f"device {self.device} went offline")

    def _answer(self, benchmark_id: str, name: str) -> tuple[float, float] | str:
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            message = self.link.next(left)
            if isinstance(message, StatusMessage):
                if not message.online:
                    raise DeviceOffline(f"device {self.device} went offline while measuring {name}")
                continue
            # a signature the device cannot verify is refused before it reads the order's id
            ours = message is not None and (
                message.deployment_id == benchmark_id
                or (message.deployment_id == "" and message.state == DeviceState.REJECTED)
            )
            if message is None or not ours:
                continue
            if message.state == DeviceState.BENCHMARKED:
                return _figures(message)
            if not message.ok:
                return f"{message.error_code or 'failed'}: {message.message}"
        # skipped like any candidate the device could not measure (the reference aborts)
        return f"no result within {self.timeout_s:g} s (a longer --measure-timeout may help)"

    def _reference_failed(self, why: str) -> str:
        text = f"device {self.device} could not measure the {REFERENCE} reference: {why}"
        if why.split(":", 1)[0] in _ARTIFACT_CODES:
            text += (
                f" (devices fetch candidates from {self.home.settings.artifact_url}: "
                "is `edgefleet serve` running?)"
            )
        return text


@contextmanager
def device_benchmarks(
    home: Home,
    device: str,
    profile: DeviceProfile,
    *,
    model: str,
    version: str,
    smoke_test: SmokeTest,
    runs: int,
    timeout_s: float,
    progress: Progress | None = None,
) -> Iterator[DeviceBenchmarks]:
    """Connect to the broker and check ``device`` is known, of ``profile`` and online; yield
    its ``DeviceBenchmarks``, and disconnect afterwards. Raises ``NotFound``, ``ConfigError``,
    ``BrokerError`` or ``DeviceOffline`` before anything is sent."""
    if timeout_s <= 0:
        raise ConfigError(f"the measure timeout must be above 0 s, not {timeout_s:g}")
    target = get_device(home, device)
    if target.profile != profile.name:
        raise ConfigError(
            f"device {device} has profile {target.profile}, not {profile.name}: "
            "measure on a device of the profile you compress for"
        )
    settings = home.settings
    link = DeviceLink(settings.broker_url, target.name, settings.topic_prefix, tls_ca=home.tls_ca())
    link.open()
    try:
        bench = DeviceBenchmarks(
            home, link, profile, model=model, version=version, smoke_test=smoke_test,
            runs=runs, timeout_s=timeout_s, progress=progress,
        )  # fmt: skip
        bench.check_online()
        yield bench
    finally:
        link.close()


def sample_for(smoke: SmokeTest, io: IOSignature) -> dict[str, TensorData]:
    """One row of the version's smoke-test input per model input, in the input's dtype: the
    local latency is timed on one row too."""
    sample: dict[str, TensorData] = {}
    for spec in io.inputs:
        tensor = smoke.inputs.get(spec.name)
        if tensor is None:
            raise ConfigError(f"the stored smoke-test sample has no input {spec.name!r}")
        array = tensor.to_numpy()
        if array.ndim and spec.shape and not isinstance(spec.shape[0], int):
            array = array[:1]
        if str(array.dtype) != spec.dtype:
            array = array.astype(spec.dtype)
        sample[spec.name] = TensorData.from_numpy(array)
    return sample


def _figures(event: EventMessage) -> tuple[float, float] | str:
    p50, p95 = event.details.get("p50_ms"), event.details.get("p95_ms")
    if not isinstance(p50, int | float) or not isinstance(p95, int | float):
        return "the device's result has no p50_ms and p95_ms"
    return float(p50), float(p95)
