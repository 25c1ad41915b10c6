"""ONNX Runtime at the registry's door: load a model file, read its signature, build and run
its smoke test. onnxruntime and onnx errors are translated here and go no further.

numpy and onnxruntime are imported by the functions that use them: `parse_model_ref` and the
rest of the catalog import this module, and commands such as `status` never need either."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.shared import (
    IOSignature,
    SmokeTest,
    TensorData,
    TensorSpec,
    find_external_data,
)
from edgefleet.shared.errors import (
    ConfigError,
    ExternalDataError,
    InvalidInput,
    ModelLoadError,
)

from .._text import first_line

if TYPE_CHECKING:
    import numpy as np

SAMPLE_ROWS = 4

# ONNX Runtime's type strings → numpy dtype names
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class InspectedModel:
    io: IOSignature
    smoke_test: SmokeTest


def inspect_model(path: Path, sample: Path | None = None) -> InspectedModel:
    """Load ``path`` with ONNX Runtime, read its signature, and compute the reference
    output on a sample (from ``sample``'s first array, or generated from the signature)."""
    import numpy as np

    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    _refuse_external_data(path)
    session = _session(path)
    io = _signature(session)
    inputs = load_sample(sample, io) if sample is not None else generated_sample(io)
    try:
        outputs = session.run(None, inputs)
    except Exception as exc:
        where = f"the sample in {sample.name}" if sample else "a generated sample"
        raise InvalidInput(f"{path.name} fails on {where}: {first_line(exc)}") from exc
    smoke = SmokeTest(
        inputs={name: TensorData.from_numpy(a) for name, a in inputs.items()},
        outputs={
            spec.name: TensorData.from_numpy(np.asarray(a))
            for spec, a in zip(io.outputs, outputs, strict=True)
        },
    )
    return InspectedModel(io=io, smoke_test=smoke)


def variant_smoke_test(path: Path, reference: SmokeTest) -> SmokeTest:
    """The smoke test for a compressed file of a version: the version's sample inputs, the
    outputs this file gives on them, and room for another CPU's kernels. A quantised file's
    outputs depend on the kernels that run it (here the fused int8 ones and ONNX Runtime's
    unoptimised QDQ arithmetic can disagree by a quantisation step or more), so ``atol``
    grows by twice the largest disagreement between those two ways of running it; for a
    float file they agree to rounding and the tolerance barely moves."""
    import numpy as np
    import onnxruntime as ort

    inputs = {name: t.to_numpy() for name, t in reference.inputs.items()}
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        unoptimised = ort.InferenceSession(str(path), plain, providers=["CPUExecutionProvider"])
        outputs = [np.asarray(a) for a in session.run(None, inputs)]
        reference_math = [np.asarray(a) for a in unoptimised.run(None, inputs)]
    except Exception as exc:  # onnxruntime's own exception classes; translated here
        raise ModelLoadError(
            f"{path.name} fails on the smoke-test sample: {first_line(exc)}"
        ) from exc
    spread = max(
        (
            float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
            for a, b in zip(outputs, reference_math, strict=True)
            if a.dtype.kind == "f"
        ),
        default=0.0,
    )
    return SmokeTest(
        inputs=reference.inputs,
        outputs={n: TensorData.from_numpy(a) for n, a in zip(names, outputs, strict=True)},
        rtol=reference.rtol,
        atol=reference.atol + 2 * spread,
    )


def read_signature(path: Path) -> IOSignature:
    """The inputs and outputs of the model in ``path``, as ONNX Runtime reads them."""
    return _signature(_session(path))


def _session(path: Path) -> Any:  # onnxruntime.InferenceSession
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unrelated classes; translate them all
        raise ModelLoadError(f"ONNX Runtime cannot load {path.name}: {first_line(exc)}") from exc


def _signature(session: Any) -> IOSignature:
    return IOSignature(
        inputs=[_spec(a) for a in session.get_inputs()],
        outputs=[_spec(a) for a in session.get_outputs()],
    )


def _refuse_external_data(path: Path) -> None:
    """The scan the agent runs too (``edgefleet.shared.find_external_data``): initializers,
    Constant and other tensor attributes, subgraphs and model-local functions."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read model file {path}: {exc.strerror}") from exc
    try:
        external = find_external_data(data)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path.name} is not an ONNX model: {exc}") from exc
    if external:
        raise ExternalDataError(
            f"{path.name} keeps weights in external files ({'; '.join(external[:3])}); "
            "save it as a single file"
        )


def _spec(arg: Any) -> TensorSpec:  # onnxruntime.NodeArg
    kind = getattr(arg, "type", "")
    if kind not in _DTYPES:
        raise ModelLoadError(
            f"input/output {arg.name!r} has type {kind}; only tensors are supported"
        )
    shape = [d if isinstance(d, int) or d is None else str(d) for d in arg.shape]
    return TensorSpec(name=arg.name, dtype=_DTYPES[kind], shape=shape)


def generated_sample(io: IOSignature, rows: int = SAMPLE_ROWS) -> dict[str, np.ndarray]:
    """Deterministic inputs that fit the signature: the first free dimension is the batch."""
    import numpy as np

    rng = np.random.default_rng(0)
    sample: dict[str, np.ndarray] = {}
    for spec in io.inputs:
        shape = [
            d if isinstance(d, int) else (rows if i == 0 else 1) for i, d in enumerate(spec.shape)
        ]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            sample[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:  # integers are often indices, and zero is a valid index of anything
            sample[spec.name] = np.zeros(shape, dtype=dtype)
    return sample


def load_sample(path: Path, io: IOSignature, rows: int = SAMPLE_ROWS) -> dict[str, np.ndarray]:
    """The first ``rows`` rows of an ``.npz``: arrays named after the inputs, or else the
    first array for a model with one input. Floats are cast to the input's float type."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError as exc:
        raise ConfigError(f"sample file {path} does not exist") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"{path.name} is not a readable .npz file: {first_line(exc)}") from exc
    if not arrays:
        raise InvalidInput(f"{path.name} holds no arrays")
    names = [spec.name for spec in io.inputs]
    if all(n in arrays for n in names):
        chosen = {n: arrays[n] for n in names}
    elif len(names) == 1:
        chosen = {names[0]: next(iter(arrays.values()))}
    else:
        raise InvalidInput(f"{path.name} must hold arrays named {', '.join(names)}")
    sample: dict[str, np.ndarray] = {}
    for spec in io.inputs:
        array = np.asarray(chosen[spec.name])
        if array.ndim == 0:
            raise InvalidInput(f"{path.name}: the array for {spec.name!r} is a scalar")
        array = array[:rows]
        want = np.dtype(spec.dtype)
        if array.dtype != want:
            if not (array.dtype.kind in "fiu" and want.kind == "f"):
                raise InvalidInput(
                    f"{path.name}: {spec.name!r} is {array.dtype}, the model wants {want}"
                )
            array = array.astype(want)
        sample[spec.name] = np.ascontiguousarray(array)
    return sample
