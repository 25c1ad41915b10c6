"""Compressing a registered model version for one device profile: the library's ``compress``
run on the stored fp32 artifact, and the chosen candidate recorded as that profile's variant.
With a device to measure on, latency comes from that device (``_device_bench``).

torch is imported only when ``--torch`` gives a PyTorch source."""

from __future__ import annotations

import contextlib
import importlib
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import select

from edgefleet.shared import SmokeTest
from edgefleet.shared.errors import ConfigError, NotFound

from .._text import first_line
from ..compress import CompressionReport, PassOptions, Progress, compress
from ..home import DeviceProfile, Home, record_profile
from ..registry import Artifact, StoredArtifact, Variant, VariantPublic, utcnow
from ._onnx import variant_smoke_test
from ._versions import ORIGINAL_VARIANT, find_version, parse_model_ref

if TYPE_CHECKING:
    import torch

    from ._device_bench import DeviceBenchmarks


@dataclass(frozen=True)
class CompressionResult:
    """What ``compress_model_version`` did: the library's report and the variant it recorded."""

    ref: str
    report: CompressionReport
    variant: VariantPublic

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data; candidate paths (a deleted temporary folder) are
        replaced by the stored variant."""
        data = self.report.to_dict()
        for item in (data["reference"], data["chosen"], *data["candidates"]):
            item.pop("path", None)
        data["model"] = self.ref
        data["variant"] = self.variant.model_dump(mode="json")
        return data


def compress_model_version(
    home: Home,
    ref: str,
    profile_name: str,
    data_path: Path,
    *,
    metric: str = "top1",
    max_drop: float | None = None,
    max_worst_drop: float | None = None,
    torch_source: str | None = None,
    torch_state: Path | None = None,
    report_path: Path | None = None,
    seed: int = 0,
    latency_runs: int = 100,
    options: PassOptions | None = None,
    progress: Progress | None = None,
    measure_on: str | None = None,
    measure_timeout_s: float = 120.0,
) -> CompressionResult:
    """Compress model version ``ref`` for profile ``profile_name`` and record the chosen
    candidate as the version's variant for that profile, replacing an older one.

    With ``measure_on``, that device (online, of this profile) benchmarks every candidate and
    its latency decides; the candidates are served to it from the artifact store by
    ``edgefleet serve``, and those not chosen are removed afterwards.

    Nothing is written to the registry unless a candidate fits: bad input raises
    ``ConfigError``/``ModelError``/``NotFound``, no fit raises ``NoCandidateFits``; a device
    that cannot be reached raises ``BrokerError``/``DeviceOffline``/``BenchmarkFailed``."""
    name, version = parse_model_ref(ref)
    profile = home.profile(profile_name)
    if profile.name == ORIGINAL_VARIANT:
        raise ConfigError(f"a profile named {ORIGINAL_VARIANT!r} would shadow the original")
    if not data_path.is_file():
        raise ConfigError(f"data file {data_path} does not exist")
    if report_path is not None and not report_path.parent.is_dir():
        raise ConfigError(f"cannot write the report: {report_path.parent} is not a folder")
    source_sha = _original_artifact(home, name, version)
    source = home.store.path_of(source_sha)
    home.store.verify(source_sha)
    if torch_source is None and torch_state is not None:
        raise ConfigError("--torch-state needs --torch")
    torch_model = load_torch_model(torch_source, torch_state) if torch_source else None
    on_device: contextlib.AbstractContextManager[DeviceBenchmarks | None]
    if measure_on is None:
        on_device = contextlib.nullcontext()
    else:
        from ._device_bench import device_benchmarks  # paho: only when a device measures

        on_device = device_benchmarks(
            home, measure_on, profile, model=name, version=version,
            smoke_test=_smoke_test(home, name, version), runs=latency_runs,
            timeout_s=measure_timeout_s, progress=progress,
        )  # fmt: skip
    recorded: str | None = None
    with on_device as bench:
        try:
            # stdout belongs to the table or the report (--json): anything a library prints
            # during the passes goes to stderr (the calibrators' chatter is logged at source)
            with (
                tempfile.TemporaryDirectory(prefix="edgefleet-compress-") as tmp,
                contextlib.redirect_stdout(sys.stderr),
            ):
                report = compress(
                    source,
                    data_path,
                    profile,
                    Path(tmp),
                    metric=metric,
                    max_drop=max_drop,
                    max_worst_drop=max_worst_drop,
                    torch_model=torch_model,
                    options=options,
                    seed=seed,
                    latency_runs=latency_runs,
                    progress=progress,
                    measure=bench,
                    measured_on=measure_on or "device",
                    model_label=f"{name}:{version}",
                )
                chosen_path = report.chosen.path
                assert chosen_path is not None  # compress always measures files
                stored = home.store.put_file(chosen_path)
            public = _record_variant(home, name, version, profile, report, stored)
            recorded = stored.sha256
        finally:
            if bench is not None:
                bench.discard(keep=recorded)
    result = CompressionResult(ref=f"{name}:{version}", report=report, variant=public)
    if report_path is not None:
        _write_report(report_path, result)
    return result


def _record_variant(
    home: Home,
    name: str,
    version: str,
    profile: DeviceProfile,
    report: CompressionReport,
    stored: StoredArtifact,
) -> VariantPublic:
    metrics = _variant_metrics(report)
    smoke = variant_smoke_test(home.store.path_of(stored.sha256), _smoke_test(home, name, version))
    with home.session(write=True) as session:
        row = find_version(session, name, version)
        record_profile(session, profile)
        if session.get(Artifact, stored.sha256) is None:
            session.add(Artifact(sha256=stored.sha256, size=stored.size, path=stored.path))
        variant = session.exec(
            select(Variant).where(
                Variant.model_version_id == row.id, Variant.profile == profile.name
            )
        ).first()
        # updated in place: deployments already recorded keep pointing at a valid row
        variant = variant or Variant(
            model_version_id=row.id,  # type: ignore[arg-type]
            name=profile.name,
            artifact_sha256=stored.sha256,
            profile=profile.name,
        )
        variant.artifact_sha256 = stored.sha256
        variant.metrics = metrics
        variant.smoke_test = smoke.model_dump(mode="json")
        variant.created_at = utcnow()
        session.add(variant)
        session.flush()
        return VariantPublic(
            name=variant.name,
            sha256=stored.sha256,
            size=stored.size,
            profile=profile.name,
            metrics=metrics,
        )


def load_torch_model(source: str, state: Path | None = None) -> torch.nn.Module:
    """``source`` is a TorchScript file, or ``module:function`` returning an ``nn.Module``
    whose weights come from ``state`` (a state-dict file) when given."""
    import torch

    path = Path(source)
    if path.is_file():
        if state is not None:
            raise ConfigError("--torch-state goes with module:function, not a TorchScript file")
        try:
            with warnings.catch_warnings():  # deprecated, yet what --torch promises to read
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # torch raises many unrelated classes for a bad file
            raise ConfigError(f"{path} is not a TorchScript file: {first_line(exc)}") from exc
    module_name, sep, function_name = source.partition(":")
    if not sep or not module_name or not function_name:
        raise ConfigError(
            f"--torch {source!r}: give a TorchScript file that exists or module:function"
        )
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--torch {source!r}: {first_line(exc)}") from exc
    try:
        module = factory()
    except Exception as exc:  # the user's code: any failure is a bad --torch
        raise ConfigError(f"--torch {source!r} failed: {first_line(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(
            f"--torch {source!r} returned {type(module).__name__}, not a torch.nn.Module"
        )
    if state is not None:
        try:
            weights = torch.load(str(state), map_location="cpu", weights_only=True)
            module.load_state_dict(weights)
        except FileNotFoundError as exc:
            raise ConfigError(f"state-dict file {state} does not exist") from exc
        except Exception as exc:  # unpickling and shape errors come in many classes
            raise ConfigError(f"cannot load {state} into {source}: {first_line(exc)}") from exc
    return module.eval()


def _original_artifact(home: Home, name: str, version: str) -> str:
    with home.session() as session:
        row = find_version(session, name, version)
        sha = session.exec(
            select(Variant.artifact_sha256).where(
                Variant.model_version_id == row.id, Variant.name == ORIGINAL_VARIANT
            )
        ).first()
    if sha is None:
        raise NotFound(f"model {name}:{version} has no {ORIGINAL_VARIANT} variant")
    return sha


def _smoke_test(home: Home, name: str, version: str) -> SmokeTest:
    with home.session() as session:
        return SmokeTest.model_validate(find_version(session, name, version).smoke_test)


def _variant_metrics(report: CompressionReport) -> dict[str, Any]:
    chosen, reference = report.chosen, report.reference
    return {
        "candidate": chosen.name,
        "recipe": chosen.recipe,
        "metric": report.metric,
        "value": chosen.metric,
        "drop": chosen.drop,
        **(
            {"worst": chosen.metric_worst, "drop_worst": chosen.drop_worst}
            if chosen.metric_worst is not None
            else {}
        ),
        "size_bytes": chosen.size_bytes,
        "latency_ms_p50": chosen.latency_ms_p50,
        "latency_ms_p95": chosen.latency_ms_p95,
        "reference": {
            "value": reference.metric,
            **({"worst": reference.metric_worst} if reference.metric_worst is not None else {}),
            "size_bytes": reference.size_bytes,
            "latency_ms_p50": reference.latency_ms_p50,
            "latency_ms_p95": reference.latency_ms_p95,
        },
        "objective": report.objective,
        "budgets": report.budgets,
        "intra_op_threads": report.intra_op_threads,
        "seed": report.seed,
        **({"measured_on": report.measured_on} if report.measured_on else {}),
    }


def _write_report(path: Path, result: CompressionResult) -> None:
    import json

    try:
        path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the report {path}: {exc.strerror or exc}") from exc
