"""ONNX Runtime on the device: load a model safely, check it, smoke-test and time it.

Models are loaded from bytes, never from a path, so an ONNX file cannot make
the runtime read other files; files that try (external data) are refused
before the runtime sees them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgefleet.shared import (
    IOSignature,
    ModelRef,
    RuntimeSettings,
    SmokeTest,
    TensorData,
    find_external_data,
)
from edgefleet.shared.errors import (
    ExternalDataError,
    ModelLoadError,
    SignatureMismatch,
    SmokeTestFailed,
)

# ONNX Runtime type strings -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None where the model leaves the dimension free


@dataclass(frozen=True)
class LoadedModel:
    """A ready ONNX Runtime session and what it is. Swapped as one reference."""

    session: ort.InferenceSession
    ref: ModelRef
    deployment_id: str
    sha256: str
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    loaded_at: float = field(default_factory=time.time)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(list(self.output_names), feeds)
        return dict(zip(self.output_names, outputs, strict=True))

    def describe(self) -> dict[str, object]:
        return {
            "name": self.ref.name,
            "version": self.ref.version,
            "variant": self.ref.variant,
            "deployment_id": self.deployment_id,
            "sha256": self.sha256,
            "inputs": [
                {"name": i.name, "dtype": str(i.dtype), "shape": list(i.shape)} for i in self.inputs
            ],
            "outputs": list(self.output_names),
        }


def load_model(
    path: Path,
    *,
    ref: ModelRef,
    deployment_id: str,
    sha256: str,
    runtime: RuntimeSettings,
) -> LoadedModel:
    """Build a session from the file's bytes with the manifest's runtime settings."""
    data = path.read_bytes()
    external = find_external_data(data)  # ModelLoadError for a file it cannot walk
    if external:
        raise ExternalDataError(
            f"model references external data ({'; '.join(external[:3])}); refused"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.intra_op_threads
    options.inter_op_num_threads = runtime.inter_op_threads
    options.log_severity_level = 3
    available = set(ort.get_available_providers())
    providers = [p for p in runtime.execution_providers if p in available] or [
        "CPUExecutionProvider"
    ]
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own untyped errors; translated here
        raise ModelLoadError(f"ONNX Runtime could not load the model: {short_error(exc)}") from exc
    inputs = tuple(
        InputSpec(
            name=i.name,
            dtype=np.dtype(_ORT_TYPES.get(i.type, "float32")),
            shape=tuple(d if isinstance(d, int) and d > 0 else None for d in i.shape),
        )
        for i in session.get_inputs()
    )
    return LoadedModel(
        session=session,
        ref=ref,
        deployment_id=deployment_id,
        sha256=sha256,
        inputs=inputs,
        output_names=tuple(o.name for o in session.get_outputs()),
    )


def check_signature(model: LoadedModel, io: IOSignature) -> None:
    """The model's inputs and outputs must be what the manifest promised."""
    got_inputs = {i.name: i for i in model.inputs}
    want_inputs = {t.name: t for t in io.inputs}
    if set(got_inputs) != set(want_inputs):
        raise SignatureMismatch(
            f"model inputs {sorted(got_inputs)} differ from the manifest's {sorted(want_inputs)}"
        )
    for name, spec in want_inputs.items():
        got = got_inputs[name]
        if str(got.dtype) != spec.dtype:
            raise SignatureMismatch(f"input {name!r} is {got.dtype}, manifest says {spec.dtype}")
        if len(got.shape) != len(spec.shape) or any(
            isinstance(w, int) and g is not None and g != w
            for g, w in zip(got.shape, spec.shape, strict=True)
        ):
            raise SignatureMismatch(
                f"input {name!r} has shape {list(got.shape)}, manifest says {spec.shape}"
            )
    want_outputs = [t.name for t in io.outputs]
    if sorted(model.output_names) != sorted(want_outputs):
        raise SignatureMismatch(
            f"model outputs {sorted(model.output_names)} differ from the manifest's "
            f"{sorted(want_outputs)}"
        )


def smoke_test(model: LoadedModel, test: SmokeTest) -> None:
    """Run the reference sample and compare every output within tolerance."""
    feeds = _feeds(test.inputs)
    try:
        outputs = model.run(feeds)
    except Exception as exc:  # ORT's runtime errors, translated
        raise SmokeTestFailed(
            f"the model failed on the smoke-test sample: {short_error(exc)}"
        ) from exc
    for name, expected in test.outputs.items():
        if name not in outputs:
            raise SmokeTestFailed(f"the model has no output {name!r}")
        want = expected.to_numpy()
        got = outputs[name]
        if got.shape != want.shape:
            raise SmokeTestFailed(f"output {name!r} has shape {got.shape}, expected {want.shape}")
        if not np.allclose(got, want, rtol=test.rtol, atol=test.atol):
            worst = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            raise SmokeTestFailed(
                f"output {name!r} differs from the reference by up to {worst:.3g} "
                f"(rtol={test.rtol}, atol={test.atol})"
            )


def benchmark(
    model: LoadedModel, sample: dict[str, TensorData], runs: int, warmup: int = 3
) -> dict[str, float]:
    """Median and p95 latency of ``runs`` single calls on the sample, in milliseconds."""
    feeds = _feeds(sample)
    for _ in range(warmup):
        model.run(feeds)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        model.run(feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"p50_ms": statistics.median(times), "p95_ms": p95, "runs": float(len(times))}


def _feeds(tensors: dict[str, TensorData]) -> dict[str, np.ndarray]:
    return {name: t.to_numpy() for name, t in tensors.items()}


def short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]
