"""Streaming an artifact: size cap, resume with Range, throughput floor and error translation."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet.agent._download import download
from edgefleet.harness import ArtifactServer
from edgefleet.shared.errors import ArtifactError, DownloadError, SizeExceeded

DATA = bytes(range(256)) * 1024  # 256 KiB, every offset distinguishable
URL = "https://artifacts.example/models/digits.onnx"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that records each request before answering."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    @property
    def ranges(self) -> list[str | None]:
        return [r.headers.get("Range") for r in self.requests]


def serve(answer: Handler) -> tuple[httpx.Client, Recorder]:
    recorder = Recorder(answer)
    return httpx.Client(transport=httpx.MockTransport(recorder)), recorder


def honour_range(data: bytes = DATA) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        rng = request.headers.get("Range")
        if rng is None:
            return httpx.Response(200, content=data)
        start = int(rng.removeprefix("bytes=").split("-")[0])
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        return httpx.Response(206, headers=headers, content=data[start:])

    return answer


def chunks(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def ticking_clock(step: float) -> Callable[[], float]:
    """A clock that advances ``step`` seconds each time it is read."""
    counter = itertools.count()
    return lambda: next(counter) * step


@pytest.fixture
def part(tmp_path: Path) -> Path:
    return tmp_path / "downloads" / (hashlib.sha256(DATA).hexdigest() + ".part")


# --- the happy path and resume ----------------------------------------------------------


def test_fresh_download_writes_every_byte_and_reports_progress(part: Path) -> None:
    client, server = serve(lambda _: httpx.Response(200, content=chunks(DATA)))
    seen: list[int] = []
    download(client, URL, part, size=len(DATA), progress=seen.append)
    assert part.read_bytes() == DATA
    assert server.ranges == [None]
    assert server.requests[0].headers["Accept-Encoding"] == "identity"
    assert seen == sorted(seen) and seen[-1] == len(DATA)


def test_resume_sends_range_and_appends(part: Path) -> None:
    half = len(DATA) // 2
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:half])
    client, server = serve(honour_range())
    download(client, URL, part, size=len(DATA))
    assert server.ranges == [f"bytes={half}-"]
    assert part.read_bytes() == DATA


def test_server_ignoring_range_restarts_from_zero(part: Path) -> None:
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:1000])
    client, server = serve(lambda _: httpx.Response(200, content=DATA))
    download(client, URL, part, size=len(DATA))
    assert server.ranges == ["bytes=1000-"]
    assert part.read_bytes() == DATA


def test_complete_file_needs_no_request(part: Path) -> None:
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA)
    client, server = serve(honour_range())
    download(client, URL, part, size=len(DATA))
    assert server.requests == []


def test_partial_longer_than_declared_is_discarded(part: Path) -> None:
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA + b"junk")
    client, server = serve(honour_range())
    download(client, URL, part, size=len(DATA))
    assert server.ranges == [None]
    assert part.read_bytes() == DATA


def test_206_from_the_wrong_offset_discards_partial(part: Path) -> None:
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:1000])
    headers = {"Content-Range": f"bytes 0-{len(DATA) - 1}/{len(DATA)}"}
    client, _ = serve(lambda _: httpx.Response(206, headers=headers, content=DATA))
    with pytest.raises(DownloadError):
        download(client, URL, part, size=len(DATA))
    assert not part.exists()


def test_416_discards_partial_so_the_retry_starts_fresh(part: Path) -> None:
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:1000])
    client, _ = serve(lambda _: httpx.Response(416, headers={"Content-Range": "bytes */10"}))
    with pytest.raises(DownloadError):
        download(client, URL, part, size=len(DATA))
    assert not part.exists()


# --- size enforcement -------------------------------------------------------------------


def test_endless_stream_stops_at_declared_size(part: Path) -> None:
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        for _ in range(10_000):  # bounded, but far beyond the declared size
            pulled += 1
            yield b"\xff" * 4096

    client, _ = serve(lambda _: httpx.Response(200, content=endless()))
    with pytest.raises(SizeExceeded):
        download(client, URL, part, size=len(DATA))
    assert not part.exists()
    assert pulled <= len(DATA) // 4096 + 1


def test_content_length_beyond_declared_size_fails_before_the_body(part: Path) -> None:
    def answer(_: httpx.Request) -> httpx.Response:
        headers = {"Content-Length": str(len(DATA) + 1)}
        return httpx.Response(200, headers=headers, content=chunks(DATA + b"x"))

    client, _ = serve(answer)
    with pytest.raises(SizeExceeded):
        download(client, URL, part, size=len(DATA))
    assert not part.exists()


def test_body_shorter_than_content_length_is_retryable_and_kept(part: Path) -> None:
    half = len(DATA) // 2

    def answer(_: httpx.Request) -> httpx.Response:
        headers = {"Content-Length": str(len(DATA))}
        return httpx.Response(200, headers=headers, content=chunks(DATA[:half]))

    client, _ = serve(answer)
    with pytest.raises(DownloadError, match="connection ended"):
        download(client, URL, part, size=len(DATA))
    assert part.read_bytes() == DATA[:half]


def test_malformed_content_length_is_a_download_error(part: Path) -> None:
    headers = {"Content-Length": "lots"}
    client, _ = serve(lambda _: httpx.Response(200, headers=headers, content=chunks(DATA)))
    with pytest.raises(DownloadError):
        download(client, URL, part, size=len(DATA))


# --- HTTP status and transport errors ---------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_client_errors_are_final(part: Path, status: int) -> None:
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:10])
    client, _ = serve(lambda _: httpx.Response(status))
    with pytest.raises(ArtifactError) as info:
        download(client, URL, part, size=len(DATA))
    assert not isinstance(info.value, DownloadError)
    assert str(status) in str(info.value)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_server_errors_are_retryable_and_keep_the_partial(part: Path, status: int) -> None:
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:10])
    client, _ = serve(lambda _: httpx.Response(status, content=b"busy"))
    with pytest.raises(DownloadError):
        download(client, URL, part, size=len(DATA))
    assert part.read_bytes() == DATA[:10]


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.ReadError("reset")]
)
def test_transport_errors_before_the_body_are_translated(part: Path, exc: Exception) -> None:
    def answer(_: httpx.Request) -> httpx.Response:
        raise exc

    client, _ = serve(answer)
    with pytest.raises(DownloadError) as info:
        download(client, URL, part, size=len(DATA))
    assert info.value.__cause__ is exc


def test_connection_reset_mid_body_keeps_what_arrived(part: Path) -> None:
    def cut() -> Iterator[bytes]:
        yield DATA[:5000]
        yield DATA[5000:9000]
        raise httpx.RemoteProtocolError("peer closed connection")

    client, _ = serve(lambda _: httpx.Response(200, content=cut()))
    with pytest.raises(DownloadError) as info:
        download(client, URL, part, size=len(DATA))
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
    assert part.read_bytes() == DATA[:9000]


def test_messages_carry_no_credentials(part: Path) -> None:
    client, _ = serve(lambda _: httpx.Response(403))
    client.headers["Authorization"] = "Bearer s3cret-token"
    url = "https://user:pa55word@artifacts.example/models/digits.onnx?sig=s3cret-sig"
    with pytest.raises(ArtifactError) as info:
        download(client, url, part, size=len(DATA))
    message = str(info.value)
    assert "digits.onnx" in message
    for secret in ("s3cret", "pa55word", "Bearer"):
        assert secret not in message


# --- throughput floor -------------------------------------------------------------------


def test_trickle_is_aborted_and_the_partial_kept(part: Path) -> None:
    # 1 KiB per 1 s tick against a 4 KiB/s floor: the first full window fails.
    client, _ = serve(lambda _: httpx.Response(200, content=chunks(DATA, 1024)))
    with pytest.raises(DownloadError, match="too slow"):
        download(
            client, URL, part, size=len(DATA),
            min_bytes_per_s=4096, throughput_window_s=5, clock=ticking_clock(1.0),
        )  # fmt: skip
    kept = part.read_bytes()
    assert 0 < len(kept) < len(DATA)
    assert kept == DATA[: len(kept)]


def test_steady_transfer_above_the_floor_completes(part: Path) -> None:
    # 16 KiB per 1 s tick against a 4 KiB/s floor, over many windows.
    client, _ = serve(lambda _: httpx.Response(200, content=chunks(DATA)))
    download(
        client, URL, part, size=len(DATA),
        min_bytes_per_s=4096, throughput_window_s=2, clock=ticking_clock(1.0),
    )  # fmt: skip
    assert part.read_bytes() == DATA


# --- against a real HTTP server on loopback ---------------------------------------------


@pytest.fixture
def artifact_server(tmp_path: Path) -> Iterator[ArtifactServer]:
    root = tmp_path / "srv"
    (root / "models").mkdir(parents=True)
    (root / "models" / "digits.onnx").write_bytes(DATA)
    server = ArtifactServer(root=root).start()
    yield server
    server.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_real_server_cut_then_resume(
    artifact_server: ArtifactServer, http: httpx.Client, part: Path
) -> None:
    url = artifact_server.base_url + "models/digits.onnx"
    artifact_server.faults.drop_after = 100_000
    with pytest.raises(DownloadError):
        download(http, url, part, size=len(DATA))
    kept = part.stat().st_size
    assert 0 < kept <= 100_000

    download(http, url, part, size=len(DATA))
    assert sha256(part) == hashlib.sha256(DATA).hexdigest()
    assert [rng for _, rng in artifact_server.requests] == [None, f"bytes={kept}-"]


def test_real_server_longer_than_declared(
    artifact_server: ArtifactServer, http: httpx.Client, part: Path
) -> None:
    artifact_server.faults.extra_bytes = 1
    with pytest.raises(SizeExceeded):
        download(http, artifact_server.base_url + "models/digits.onnx", part, size=len(DATA))
    assert not part.exists()


def test_real_server_ignoring_range(
    artifact_server: ArtifactServer, http: httpx.Client, part: Path
) -> None:
    artifact_server.faults.ignore_range = True
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:5000])
    download(http, artifact_server.base_url + "models/digits.onnx", part, size=len(DATA))
    assert sha256(part) == hashlib.sha256(DATA).hexdigest()


def test_real_server_missing_artifact(
    artifact_server: ArtifactServer, http: httpx.Client, part: Path
) -> None:
    with pytest.raises(ArtifactError, match="not found") as info:
        download(http, artifact_server.base_url + "models/nope.onnx", part, size=len(DATA))
    assert not isinstance(info.value, DownloadError)
