"""On-device benchmarks of candidate models that are measured and never served.

A benchmark keeps no state, so there is nothing to resume after a restart; it
fetches and verifies its artifact the way a deployment does.
"""

from __future__ import annotations

from edgefleet.shared import BenchmarkOrder, DeviceState
from edgefleet.shared.errors import EdgefleetError

from ._fetch import ArtifactFetcher
from ._reporting import Reporter
from ._runtime import benchmark, check_signature, load_model


def run_benchmark(order: BenchmarkOrder, fetcher: ArtifactFetcher, reporter: Reporter) -> None:
    """Fetch, load, check and time the ordered model; report the figures or the failure.

    The artifact is deleted afterwards unless a record (the active, previous or deploying
    model) refers to it; while the benchmark runs, nothing deletes it.
    """
    artifact = order.artifact
    reporter.event(order.benchmark_id, DeviceState.BENCHMARKING)
    try:
        with fetcher.holding(artifact):
            path = fetcher.fetch(artifact)
            model = load_model(
                path,
                ref=order.model,
                deployment_id=order.benchmark_id,
                sha256=artifact.sha256,
                runtime=order.runtime,
            )
            check_signature(model, order.io)
            result = benchmark(model, order.sample, order.runs)
    except EdgefleetError as exc:
        reporter.event(
            order.benchmark_id,
            DeviceState.BENCHMARK_FAILED,
            ok=False,
            code=exc.code,
            message=str(exc),
        )
        return
    finally:
        fetcher.discard(artifact)
    reporter.event(
        order.benchmark_id,
        DeviceState.BENCHMARKED,
        details={**result, "model": str(order.model)},
    )
