"""An agent subprocess, a real broker and real models: deploy, hot-swap under load, roll back."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import numpy as np
import pytest

from edgefleet.harness import digits, infer_digits, write_digits_model

pytestmark = pytest.mark.slow  # agent subprocesses


def test_deploy_serves_and_swap_drops_no_request(tmp_path, make_agent, operator, observer):
    v1 = write_digits_model(tmp_path / "v1.onnx", seed=1)
    v2 = write_digits_model(tmp_path / "v2.onnx", seed=2)
    agent = make_agent(
        "dev-1",
        artifact_token="tok-SECRET-1",
        broker_username="dev-1",
        broker_password="pw-SECRET-2",
    )
    agent.wait_serving()

    m1 = operator.deploy("dev-1", v1, version="1.0.0")
    committed = observer.wait_event(m1.deployment_id, "committed")
    assert committed.details["p50_ms"] > 0  # the on-device benchmark ran
    x, _y = digits()
    out = infer_digits(agent.url, x[:50])
    assert out["model"]["version"] == "1.0.0"
    assert np.asarray(out["outputs"]["probs"]).shape == (50, 10)

    # clients keep sending while v2 is swapped in
    stop = threading.Event()
    results: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            for i in range(5000):
                if stop.is_set():
                    return
                try:
                    r = http.post(
                        f"{agent.url}/v1/infer",
                        json={"inputs": {"input": x[i % 100 : i % 100 + 1].tolist()}},
                    )
                    key = (
                        r.headers.get("X-Edgefleet-Model", "?")
                        if r.status_code == 200
                        else f"HTTP {r.status_code}"
                    )
                except httpx.HTTPError as exc:
                    key = f"error {type(exc).__name__}"
                with lock:
                    results[key] += 1

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(400):  # traffic is flowing on v1 before the swap starts
        if sum(results.values()) >= 100:
            break
        stop.wait(0.05)
    mark = observer.mark()
    m2 = operator.deploy("dev-1", v2, version="2.0.0")
    observer.wait_event(m2.deployment_id, "committed")
    # a little more traffic on v2, then stop
    target = sum(results.values()) + 100
    for _ in range(200):
        if sum(results.values()) >= target:
            break
        stop.wait(0.05)
    stop.set()
    for t in threads:
        t.join()

    failures = {k: v for k, v in results.items() if not k.startswith("digits:")}
    assert failures == {}, results
    assert "digits:1.0.0/fp32" in results and "digits:2.0.0/fp32" in results, results
    meta = httpx.get(f"{agent.url}/v1/model").json()
    assert meta["version"] == "2.0.0"

    status = observer.wait_serving("dev-1", m2.deployment_id, since=mark)
    assert status.previous.deployment_id == m1.deployment_id
    assert status.last_sequence == m2.sequence
    # events came in lifecycle order
    states = [e.state for e in observer.events("dev-1", m2.deployment_id)]
    assert states == ["downloading", "verifying", "loading", "testing", "switching", "committed"]
    # one log line per event, and no secrets in the log
    log = agent.log_text()
    for state in states:
        assert f"event {state} deployment={m2.deployment_id}" in log
    assert "SECRET" not in log


def test_signed_rollback_switches_back_and_is_applied_once(
    tmp_path, make_agent, operator, observer
):
    v1 = write_digits_model(tmp_path / "v1.onnx", seed=1)
    v2 = write_digits_model(tmp_path / "v2.onnx", seed=2)
    agent = make_agent("dev-rb")
    m1 = operator.deploy("dev-rb", v1, version="1.0.0")
    observer.wait_event(m1.deployment_id, "committed")
    m2 = operator.deploy("dev-rb", v2, version="2.0.0")
    observer.wait_event(m2.deployment_id, "committed")

    rollback_id, payload = operator.rollback_payload("dev-rb", undoes=m2.deployment_id)
    mark = observer.mark()
    operator.send("dev-rb", payload)
    observer.wait_event(rollback_id, "rolled_back")
    assert httpx.get(f"{agent.url}/v1/model").json()["version"] == "1.0.0"
    status = observer.wait_serving("dev-rb", m1.deployment_id, since=mark)
    assert status.previous.deployment_id == m2.deployment_id

    # the same command again (a QoS 1 duplicate or a replay) changes nothing
    operator.send("dev-rb", payload)
    ping_probe = operator.deploy("dev-rb", v2, version="2.0.1")
    observer.wait_event(ping_probe.deployment_id, "committed")
    assert [e.state for e in observer.events("dev-rb", rollback_id)] == [
        "rolling_back",
        "rolled_back",
    ]


def test_telemetry_reports_requests_and_latency(tmp_path, make_agent, operator, observer):
    v1 = write_digits_model(tmp_path / "v1.onnx", seed=1)
    agent = make_agent("dev-tel")
    m1 = operator.deploy("dev-tel", v1)
    observer.wait_event(m1.deployment_id, "committed")
    x, _ = digits()
    with httpx.Client() as http:
        for i in range(30):
            infer_digits(agent.url, x[i : i + 1], client=http)
        http.post(f"{agent.url}/v1/infer", json={"inputs": {"wrong": [[0.0]]}})

    def has_traffic(m):
        return (
            m.kind == "telemetry"
            and m.device_id == "dev-tel"
            and any(s.deployment_id == m1.deployment_id and s.requests > 0 for s in m.models)
        )

    def counted() -> tuple[int, int]:
        with observer.lock:
            stats = [
                s
                for _, m in observer.messages
                if m.kind == "telemetry"
                for s in m.models
                if s.deployment_id == m1.deployment_id
            ]
        return sum(s.requests for s in stats), sum(s.errors for s in stats)

    first = observer.wait_for(has_traffic, timeout=15)
    # every request is counted once, across however many intervals it took
    observer.wait_for(lambda _: counted()[0] >= 31, timeout=15)
    assert counted() == (31, 1)
    stats = next(s for s in first.models if s.deployment_id == m1.deployment_id)
    assert sum(stats.latency_counts) == stats.requests
    assert stats.p95_ms is not None and stats.p95_ms > 0
    assert first.system.rss_bytes and first.system.rss_bytes > 0


def test_benchmark_command_measures_without_swapping(tmp_path, make_agent, operator, observer):
    v1 = write_digits_model(tmp_path / "v1.onnx", seed=1)
    candidate = write_digits_model(tmp_path / "candidate.onnx", seed=7, hidden=64)
    agent = make_agent("dev-bench")
    m1 = operator.deploy("dev-bench", v1)
    observer.wait_event(m1.deployment_id, "committed")

    bench_id, payload = operator.benchmark_payload("dev-bench", candidate, runs=30)
    operator.send("dev-bench", payload)
    result = observer.wait_event(bench_id, "benchmarked")
    assert result.details["runs"] == 30
    assert 0 < result.details["p50_ms"] <= result.details["p95_ms"]
    # measured, not served, and not kept on disk
    assert httpx.get(f"{agent.url}/v1/model").json()["deployment_id"] == m1.deployment_id
    models = sorted(p.name for p in (agent.state_dir / "models").iterdir())
    assert models == [f"{m1.artifact.sha256}.onnx"]
