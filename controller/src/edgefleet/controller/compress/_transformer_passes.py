"""Passes for transformer graphs: ONNX Runtime's transformer fusions (attention, LayerNorm,
GELU, embeddings) at a portable level, and block-wise weight-only quantisation of MatMul
weights (and embedding tables) to 4 or 8 bits with ``MatMulNBits``."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgefleet.shared.errors import ConfigError

from .._text import first_line
from ._onnx_passes import Candidate, PassFailed, derived

TransformerKind = Literal["bert"]
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
# what the fusions produce; a graph in which none appear had nothing to fuse
_FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "LayerNormalization",
    "Gelu",
    "FastGelu",
    "BiasGelu",
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The optimiser and the quantisers log at INFO and print; none of it is for the
    operator's terminal."""
    loggers = [
        logging.getLogger(n)
        for n in (
            "onnxruntime",
            "onnxruntime.transformers",
            "onnxruntime.quantization",
            "onnxruntime.quantization.matmul_nbits_quantizer",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        # int4 embeddings move the model to opset 21 (the recipe says so); the warning
        # that it does is not the operator's business
        lg.setLevel(logging.ERROR)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
            np.errstate(divide="ignore", invalid="ignore"),
        ):
            # an all-zero block (the padding token's embedding) divides by a zero scale
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def fuse_transformer(
    source: Candidate,
    out_dir: Path,
    *,
    model_type: TransformerKind = "bert",
    num_heads: int = 0,
    hidden_size: int = 0,
) -> Candidate:
    """ONNX Runtime's transformer optimiser with its Python fusions only (``opt_level=0``):
    attention, skip/LayerNorm, GELU and embedding subgraphs become ``com.microsoft``
    contrib ops that every CPU build of ONNX Runtime runs, arm64 included. No ONNX Runtime
    graph optimisation is baked in: the higher levels write layouts tied to the CPU that
    ran them. ``num_heads``/``hidden_size`` 0 are read from the graph. Raises
    ``PassFailed`` when there was nothing to fuse (not a transformer)."""
    from onnxruntime.transformers.optimizer import optimize_model

    out = out_dir / f"{source.name}.fused.onnx"
    if not num_heads or not hidden_size:
        found_heads, found_hidden = attention_shape(source.path)
        num_heads, hidden_size = num_heads or found_heads, hidden_size or found_hidden
    try:
        with _quiet():
            model = optimize_model(
                str(source.path),
                model_type=model_type,
                num_heads=num_heads,
                hidden_size=hidden_size,
                opt_level=0,
                use_gpu=False,
                only_onnxruntime=False,
            )
            stats = model.get_fused_operator_statistics()
            fused = {op: int(n) for op, n in stats.items() if op in _FUSED_OPS and n}
            if fused:
                model.save_model_to_file(str(out), use_external_data_format=False)
    except Exception as exc:  # the optimiser raises assorted built-in and onnx errors
        raise PassFailed(f"transformer fusion of {source.name} failed: {first_line(exc)}") from exc
    if not fused:
        raise PassFailed(f"transformer fusion of {source.name}: no transformer blocks to fuse")
    recipe = {
        "pass": "transformer_fusion",
        "model_type": model_type,
        "opt_level": 0,
        "fused": fused,
    }
    return derived(source, out, recipe)


def attention_shape(model: Path) -> tuple[int, int]:
    """(heads, hidden size) read from the graph: the hidden size from the LayerNorm scale,
    the head size from the shape ``[batch, seq, -1, head_size]`` that splits the heads
    (constant, or concatenated as PyTorch's exporter writes it); (0, 0) if not found.
    ONNX Runtime's own detection misses the concatenated form."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producers = {out: node for node in graph.node for out in node.output}
    hidden = next(
        (int(values[n.input[1]].size) for n in graph.node
         if n.op_type == "LayerNormalization" and n.input[1] in values),
        0,
    )  # fmt: skip
    counts: dict[int, int] = {}
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        shape: Any = values.get(node.input[1])
        concat = producers.get(node.input[1])
        if shape is None and concat is not None and concat.op_type == "Concat":
            parts = [values.get(i) for i in concat.input]
            if len(parts) == 4 and all(p is not None and p.size == 1 for p in parts[2:]):
                shape = [0, 0, int(parts[2].ravel()[0]), int(parts[3].ravel()[0])]  # type: ignore[union-attr]
        if shape is not None and len(shape) == 4 and int(shape[3]) > 0:
            head = int(shape[3])
            if hidden and hidden % head == 0 and head < hidden:
                counts[head] = counts.get(head, 0) + 1
    if not counts:
        return 0, 0
    head = max(counts, key=lambda k: counts[k])
    return hidden // head, hidden


def quantize_weights_nbits(
    source: Candidate,
    out_dir: Path,
    *,
    bits: Literal[4, 8] = 4,
    block_size: int = 32,
    symmetric: bool = True,
    embeddings: bool = True,
    only: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    accuracy_level: int | None = None,
) -> Candidate:
    """MatMul weights to ``bits``-bit integers in blocks of ``block_size`` along the input
    axis, each block with its own float scale (and a zero point unless ``symmetric``): ONNX
    Runtime's ``MatMulNBits``, activations staying float. With ``embeddings``, 4-bit also
    quantises the embedding tables (``GatherBlockQuantized``): they are half of a small
    encoder's bytes. ``only``/``exclude`` pick nodes by name. ``accuracy_level`` is
    MatMulNBits' compute type (None: float, the same result on every CPU)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size not in INT4_BLOCK_SIZES:
        raise ConfigError(
            f"block size must be one of {', '.join(map(str, INT4_BLOCK_SIZES))}, not {block_size}"
        )
    if bits not in (4, 8):
        raise ConfigError(f"weight-only quantisation takes 4 or 8 bits, not {bits}")
    gather = embeddings and bits == 4  # GatherBlockQuantized has 4-bit kernels only
    ops = ("MatMul", "Gather") if gather else ("MatMul",)
    tag = f"int{bits}w-b{block_size}{'-sym' if symmetric else '-asym'}{'' if gather else '-noemb'}"
    out = out_dir / f"{source.name}.{tag}.onnx"
    try:
        with _quiet():
            quantizer = MatMulNBitsQuantizer(
                onnx.load(str(source.path)),
                bits=bits,
                block_size=block_size,
                is_symmetric=symmetric,
                accuracy_level=accuracy_level,
                nodes_to_exclude=list(exclude),
                nodes_to_include=None if only is None else list(only),
                op_types_to_quantize=ops,
            )
            quantizer.process()
            model = quantizer.model.model
            changed = sum(
                n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in model.graph.node
            )
            if not changed:
                raise PassFailed(f"int{bits} of {source.name}: no MatMul with constant weights")
            onnx.save(model, str(out))
    except PassFailed:
        raise
    except Exception as exc:  # the quantiser raises assorted built-in and onnx errors
        raise PassFailed(f"int{bits} of {source.name} failed: {first_line(exc)}") from exc
    recipe = {
        "pass": "int4_weight" if bits == 4 else "int8_weight",
        "format": "MatMulNBits",
        "bits": bits,
        "block_size": block_size,
        "symmetric": symmetric,
        "embeddings": gather,
        "accuracy_level": accuracy_level,
        "opset": max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0
        ),
        **({"kept_float": list(exclude)} if exclude else {}),
    }
    return derived(source, out, recipe)
