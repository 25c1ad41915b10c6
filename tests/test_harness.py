"""The development harness: its public surface, that the demo and the benchmarks need
nothing from tests/, and that no shipped distribution depends on it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import requires
from pathlib import Path

import httpx
import numpy as np
import pytest

import edgefleet.harness as harness
from edgefleet.agent._runtime import LoadedModel, load_model, smoke_test
from edgefleet.agent._serving import InferenceServer
from edgefleet.agent._slot import ModelSlot
from edgefleet.agent._telemetry import RequestStats
from edgefleet.harness import public_names, ruff_order
from edgefleet.shared import ModelRef, RuntimeSettings

REPO = Path(__file__).resolve().parents[1]

# Loads a script's top level (its imports, not main()) and prints every module it brought
# in from the repository's tests/ folder, and whether it touched sys.path. Run from the
# repository root, where `import tests...` would succeed, so a test import is seen, not
# merely failed.
_IMPORTS = """
import json, runpy, sys
from pathlib import Path
tests = Path.cwd().resolve() / "tests"
path_before = list(sys.path)
runpy.run_path(sys.argv[1], run_name="imported_by_a_test")
found = sorted(
    name for name, module in list(sys.modules.items())
    if name == "tests" or name.startswith("tests.") or name == "conftest"
    or tests in Path(getattr(module, "__file__", None) or "/").resolve().parents
)
print(json.dumps({"test_modules": found, "sys_path_changed": sys.path != path_before}))
"""


def test_all_is_sorted_unique_and_complete() -> None:
    names = list(harness.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=ruff_order)
    assert [n for n in names if not hasattr(harness, n)] == []
    assert public_names(harness) - set(names) == set()


def test_the_demo_imports_no_test_module_and_leaves_sys_path_alone() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS, str(REPO / "bench" / "demo.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "test_modules": [],
        "sys_path_changed": False,
    }


@pytest.mark.parametrize(
    "distribution", ["edgefleet-shared", "edgefleet-agent", "edgefleet-controller"]
)
def test_no_shipped_distribution_depends_on_the_harness(distribution: str) -> None:
    assert not [r for r in requires(distribution) or [] if r.startswith("edgefleet-harness")]


# -- the rollout helpers: slow and failing models, client traffic ------------------------


def _load(path: Path, deployment_id: str) -> LoadedModel:
    return load_model(
        path,
        ref=ModelRef(name="digits", version=deployment_id),
        deployment_id=deployment_id,
        sha256="0" * 64,
        runtime=RuntimeSettings(intra_op_threads=1),
    )


def _infer(http: httpx.Client, url: str, rows: np.ndarray) -> httpx.Response:
    return http.post(f"{url}/v1/infer", json={"inputs": {"input": rows.tolist()}})


def test_the_slow_model_answers_like_digits_model_and_is_slower_as_the_agent_measures(
    tmp_path: Path,
) -> None:
    normal = _load(harness.write_digits_model(tmp_path / "normal.onnx", seed=1), "normal")
    slow_path = harness.write_slow_digits_model(tmp_path / "slow.onnx", seed=1)
    slow = _load(slow_path, "slow")
    x = harness.digits()[0][:300]
    want, got = normal.run({"input": x})["probs"], slow.run({"input": x})["probs"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    smoke_test(slow, harness.smoke_sample(tmp_path / "normal.onnx"))  # digits_model's sample

    # Timed the way telemetry reports it: the agent's own request latency, whole requests
    # through its inference server, the two models answering alternately side by side.
    stats = {name: RequestStats() for name in ("normal", "slow")}
    servers = {
        name: InferenceServer(ModelSlot(model), stats[name])
        for name, model in (("normal", normal), ("slow", slow))
    }
    with servers["normal"], servers["slow"], httpx.Client() as http:
        for i in range(300):
            for server in servers.values():
                _infer(http, server.url, x[i : i + 1]).raise_for_status()
    (normal_stats,), (slow_stats,) = stats["normal"].drain(), stats["slow"].drain()
    assert normal_stats.requests == slow_stats.requests == 300
    assert normal_stats.p50_ms is not None and slow_stats.p50_ms is not None
    ratio = slow_stats.p50_ms / normal_stats.p50_ms
    assert ratio >= 1.5, (normal_stats.p50_ms, slow_stats.p50_ms)  # ~3.4x measured, 2 cores


def test_the_failing_model_passes_its_smoke_test_and_fails_requests_with_the_marker(
    tmp_path: Path,
) -> None:
    path = harness.write_failing_digits_model(tmp_path / "failing.onnx", seed=2)
    normal_path = harness.write_digits_model(tmp_path / "normal.onnx", seed=2)
    failing = _load(path, "failing")
    sample = harness.smoke_sample(path)  # what a deployment of it is smoke-tested with
    smoke_test(failing, sample)
    smoke_test(failing, harness.smoke_sample(normal_path))  # and it answers like digits_model
    x = harness.digits()[0][:8]
    with pytest.raises(Exception, match="out of data bounds"):
        failing.session.run(None, {"input": harness.poisoned(x[:1])})
    mixed = x.copy()
    mixed[3] = harness.poisoned(x[3])
    with pytest.raises(Exception, match="Gather"):
        failing.session.run(None, {"input": mixed})

    # the agent's inference server answers 500 and counts an error against the model
    stats = RequestStats()
    with InferenceServer(ModelSlot(failing), stats) as server, httpx.Client() as http:
        assert _infer(http, server.url, x[:2]).status_code == 200
        refused = _infer(http, server.url, harness.poisoned(x[:1]))
        assert (refused.status_code, refused.json()["code"]) == (500, "inference_failed")
    (counted,) = stats.drain()
    assert (counted.deployment_id, counted.requests, counted.errors) == ("failing", 2, 1)


class _Endpoint(ThreadingHTTPServer):
    """A stand-in inference endpoint: 500 inference_failed on a poisoned row, else ``mode``:
    "ok" (200), "no_model" or "busy" (503 with that code), or "gone" (hangs up)."""

    daemon_threads = True
    mode = "ok"


class _EndpointHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each keep-alive request waits ~40 ms (see _serving)
    server: _Endpoint

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.mode == "gone":  # hang up without an answer
            self.close_connection = True
            return
        rows = np.asarray(body["inputs"]["input"])
        if (rows > harness.POISON_ABOVE).any():
            status, reply = 500, {"code": "inference_failed", "error": "Gather out of bounds"}
        elif self.server.mode == "ok":
            status, reply = 200, {"outputs": {"probs": [[0.1] * 10]}}
        else:
            status, reply = 503, {"code": self.server.mode, "error": self.server.mode}
        content = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("X-Edgefleet-Deployment", "dep-a")
        self.end_headers()
        self.wfile.write(content)


@contextlib.contextmanager
def _endpoint(mode: str) -> Iterator[tuple[_Endpoint, str]]:
    server = _Endpoint(("127.0.0.1", 0), _EndpointHandler)
    server.mode = mode
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_client_traffic_counts_ok_failed_poisoned_and_unreachable_apart() -> None:
    with _endpoint("ok") as (_, good), _endpoint("busy") as (_, busy):
        urls = {"good": good, "busy": busy, "down": f"http://127.0.0.1:{harness.free_port()}"}
        with harness.ClientTraffic(urls, rate_per_s=200.0, poison_share=0.3, seed=1) as traffic:

            def enough() -> bool:
                t = traffic.tallies()
                return (
                    min(t["good"].ok, t["busy"].failed, t["down"].unreachable) >= 20
                    and min(t["good"].poisoned_refused, t["busy"].poisoned_refused) >= 3
                )

            harness.wait_until(enough, 10, "traffic on every device", every=0.02)
    tallies = traffic.tallies()
    good_t, busy_t, down_t = tallies["good"], tallies["busy"], tallies["down"]
    assert not traffic.running
    # the good device: every clean request answered, every poisoned one refused as meant
    assert (good_t.failed, good_t.unreachable, good_t.poisoned_ok) == (0, 0, 0)
    assert good_t.ok > 0 and good_t.poisoned_refused > 0
    assert good_t.deployments == {"dep-a": good_t.ok}
    # the busy device: answers, but every clean request fails; poisoned ones still count apart
    assert busy_t.ok == 0 and busy_t.failed > 0 and busy_t.poisoned_refused > 0
    # the device that never came up: unreachable, not failed
    assert (down_t.ok, down_t.failed, down_t.unreachable) == (0, 0, down_t.sent)
    assert traffic.counts() == {
        "good": (good_t.ok, 0),
        "busy": (0, busy_t.failed),
        "down": (0, 0),
    }
    assert traffic.unreachable()["down"] == down_t.sent
    failures = traffic.failures()
    assert failures and all(f.startswith("busy +") and "HTTP 503 busy" in f for f in failures)
    # poisoned share near what was asked (seeded, so the same every run)
    assert 0.15 < good_t.poisoned_refused / good_t.sent < 0.45


def test_client_traffic_counts_a_device_failing_after_it_answered_as_failed() -> None:
    with _endpoint("no_model") as (server, url):
        traffic = harness.ClientTraffic({"dev": url}, rate_per_s=200.0).start()
        try:
            # not serving yet: 503 no_model is "unreachable", not a failure
            harness.wait_until(lambda: traffic.unreachable()["dev"] >= 5, 10, "no_model answers")
            server.mode = "ok"
            traffic.wait_answered(5, timeout=10)
            server.mode = "no_model"  # serving, then not: now that is a failure
            harness.wait_until(lambda: traffic.counts()["dev"][1] >= 3, 10, "503 failures")
            server.shutdown()
            server.server_close()  # and gone: refused connections are failures too
            server.mode = "gone"  # (the keep-alive connection open now is hung up on)
            failed = traffic.counts()["dev"][1]
            harness.wait_until(lambda: traffic.counts()["dev"][1] >= failed + 3, 10, "refusals")
        finally:
            traffic.stop()
    ok, failed = traffic.counts()["dev"]
    assert ok >= 5 and failed >= 6
    failures = traffic.failures()
    assert any("HTTP 503 no_model" in f for f in failures)
    assert any("ConnectError" in f for f in failures), failures
    assert not traffic.running
