"""Where the time of the digits CNN goes at batch 1, fp32 against int8 static QDQ: the
Python call that every inference pays (an Identity model), both models side by side, and
ONNX Runtime's own per-operator profile of each. Made to explain the x86-edge speed budget
of issue 4 (>= 1.5x) on a CPU without VNNI; run it on the target box to see its answer.

Run: .venv/bin/python bench/int8_breakdown.py [--runs 2000] [--threads 1 2] [--method entropy]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from edgefleet.controller.compress import (
    EvalData,
    export_onnx,
    quantize_int8_static,
    time_side_by_side,
)
from edgefleet.harness import TRAIN_ROWS, digits_images, train_cnn

INPUT = "input"


def identity_model(path: Path) -> Path:
    """A graph that only hands its input back: the cost of one ``session.run`` itself."""
    import onnx
    from onnx import TensorProto, helper

    shape = [None, 1, 8, 8]
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT], ["output"])], "identity",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def operator_profiles(
    models: dict[str, Path], sample: np.ndarray, runs: int
) -> dict[str, list[tuple[str, float]]]:
    """Median kernel time per node (µs, one thread) from ONNX Runtime's profiler, the models
    run in turn so that noise hits all alike. The profiler rounds to whole microseconds and
    adds its own cost to each node."""
    import onnxruntime as ort

    sessions = {}
    for name, model in models.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(model.with_suffix(""))
        options.log_severity_level = 3
        sessions[name] = ort.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"]
        )
    for _ in range(runs):
        for session in sessions.values():
            session.run(None, {INPUT: sample})
    skip = runs // 5  # the first runs warm caches and the allocator
    profiles = {}
    for name, session in sessions.items():
        trace = Path(session.end_profiling())
        times: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
        for event in json.loads(trace.read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                node = event["name"][: -len("_kernel_time")]
                times[(event["args"]["op_name"], node)].append(event["dur"])
        trace.unlink()
        profiles[name] = [
            (f"{op} {node}", float(np.median(d[skip:]))) for (op, node), d in times.items()
        ]
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="interleaved latency rounds")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--method", default="entropy", choices=["minmax", "entropy", "percentile"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x, y = digits_images()
    sample = np.ascontiguousarray(x[-1:])  # a row the calibration below never sees
    with tempfile.TemporaryDirectory(prefix="edgefleet-int8-") as tmp:
        work = Path(tmp)
        fp32 = export_onnx(train_cnn(args.seed), x[:1], work / "fp32.onnx", input_name=INPUT,
                           name="fp32")  # fmt: skip
        calibration_rows = slice(TRAIN_ROWS, TRAIN_ROWS + 300)
        calibration = EvalData.single(INPUT, x[calibration_rows], y[calibration_rows])
        int8 = quantize_int8_static(fp32, work, calibration, method=args.method)
        models = {"identity": identity_model(work / "identity.onnx"), "fp32": fp32.path,
                  "int8": int8.path}  # fmt: skip
        print(f"machine: {os.cpu_count()} CPUs; batch 1; {args.runs} interleaved rounds; "
              f"int8 = static QDQ, {args.method} calibration")  # fmt: skip
        print(f"{'threads':>7} {'run() µs':>9} {'fp32 µs':>8} {'int8 µs':>8} "
              f"{'fp32/int8':>9} {'net ratio':>10}   (net: run() taken off both)")  # fmt: skip
        for threads in args.threads:
            t = time_side_by_side(models, sample, INPUT, intra_op_threads=threads,
                                  runs=args.runs, warmup=50, seed=args.seed)  # fmt: skip
            call, f, q = (t[n].latency_ms_p50 * 1000 for n in ("identity", "fp32", "int8"))
            print(f"{threads:>7} {call:>9.1f} {f:>8.1f} {q:>8.1f} {f / q:>9.2f} "
                  f"{(f - call) / (q - call):>10.2f}")  # fmt: skip
        profiles = operator_profiles(
            {"fp32": fp32.path, "int8": int8.path}, sample, min(args.runs, 3000)
        )
        for name, rows in profiles.items():
            print(f"\n{name}: ONNX Runtime per-node median, one thread (profiler-rounded µs)")
            for label, micros in rows:
                print(f"  {label[:58]:58} {micros:6.1f}")
            print(f"  {'sum':58} {sum(m for _, m in rows):6.1f}")


if __name__ == "__main__":
    main()
