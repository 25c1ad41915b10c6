"""Compression per shipped profile on a CNN (the small digits CNN, or with --model mobilenet
a MobileNet-v3-Small, re-implemented in torch, on the digits at 32x32): every candidate's
size, top-1 and median latency against fp32, measured side by side in the same run; the
chosen one marked.

Budgets (issue 4), on x86-edge: chosen >= 3.5x smaller and >= 1.5x faster than fp32 at a
top-1 drop <= 1 point; with pruning and distillation allowed, >= 10x fewer bytes at <= 1 point.
Run: .venv/bin/python bench/compress_profiles.py [--runs 300] [--batch 1] [--threads N]
     [--only x86-edge ...] [--model digits|mobilenet]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from edgefleet.controller.compress import (
    CompressionReport,
    NoCandidateFits,
    compress,
    export_onnx,
)
from edgefleet.controller.home import (
    DeviceProfile,
    builtin_profiles_dir,
    load_profiles,
)
from edgefleet.harness import (
    digits_images,
    edge_images,
    train_cnn,
    train_mobilenet,
    write_edge_eval_npz,
    write_eval_npz,
)


def table(report: CompressionReport) -> str:
    ref = report.reference
    rows = [
        f"{'':2}{'candidate':34} {'bytes':>9} {'size/fp32':>9} {'x smaller':>9} "
        f"{'top1':>7} {'Δ pts':>6} {'p50 ms':>8} {'p95 ms':>8} {'p50/fp32':>8}  breaks"
    ]
    for c in report.candidates:
        mark = "* " if c.name == report.chosen.name else "  "
        rows.append(
            f"{mark}{c.name:34} {c.size_bytes:>9,} {c.size_bytes / ref.size_bytes:>9.3f} "
            f"{ref.size_bytes / c.size_bytes:>9.2f} {c.metric * 100:>6.2f}% "
            f"{(c.metric - ref.metric) * 100:>+6.2f} {c.latency_ms_p50:>8.4f} "
            f"{c.latency_ms_p95:>8.4f} {c.latency_ms_p50 / ref.latency_ms_p50:>8.3f}  "
            f"{'; '.join(b.text for b in c.breaches)}"
        )
    return "\n".join(rows)


def verdict(report: CompressionReport, min_smaller: float, min_faster: float | None) -> str:
    ref, ch = report.reference, report.chosen
    smaller = ref.size_bytes / ch.size_bytes
    faster = ref.latency_ms_p50 / ch.latency_ms_p50
    drop_pts = (ref.metric - ch.metric) * 100
    checks = [f"{smaller:.2f}x smaller (need >= {min_smaller})", f"drop {drop_pts:.2f} pts (<= 1)"]
    ok = smaller >= min_smaller and drop_pts <= 1.0
    if min_faster is not None:
        checks.insert(1, f"{faster:.2f}x faster p50 (need >= {min_faster})")
        ok = ok and faster >= min_faster
    return f"{'MET' if ok else 'NOT MET'}: chosen {ch.name}: " + ", ".join(checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="interleaved latency rounds")
    parser.add_argument("--batch", type=int, default=1, help="rows per timed inference")
    parser.add_argument("--threads", type=int, default=0, help="override intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=[], help="profile names to run")
    parser.add_argument("--model", choices=["digits", "mobilenet"], default="digits")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-compress-"))
    if args.model == "mobilenet":
        model = train_mobilenet(seed=args.seed, epochs=6)
        x, _ = edge_images()
        data = write_edge_eval_npz(work / "eval.npz")
    else:
        model = train_cnn(seed=args.seed)
        x, _ = digits_images()
        data = write_eval_npz(work / "eval.npz")
    fp32 = export_onnx(model, x, work / "model.onnx", input_name="input", name="model").path
    print(
        f"{args.model} CNN trained in {time.monotonic() - t0:.1f} s; fp32 {fp32.stat().st_size:,} B"
    )
    print(f"machine: {os.cpu_count()} CPUs; latency batch {args.batch}, {args.runs} rounds\n")

    profiles: dict[str, tuple[DeviceProfile, str]] = {
        name: (p, "latency") for name, p in load_profiles([builtin_profiles_dir()]).items()
    }
    x86 = profiles["x86-edge"][0]
    extra = x86.model_copy(
        update={
            "name": "x86-edge+prune+distill",
            "compression": x86.compression.model_copy(
                update={"passes": ["prune", "distill", *x86.compression.passes]}
            ),
        }
    )
    profiles[extra.name] = (extra, "size")

    for name, (profile, objective) in profiles.items():
        if args.only and name not in args.only:
            continue
        if args.threads:
            runtime = profile.runtime.model_copy(update={"intra_op_threads": args.threads})
            profile = profile.model_copy(update={"runtime": runtime})
        t0 = time.monotonic()
        try:
            report = compress(
                fp32,
                data,
                profile,
                work / name,
                torch_model=model,
                objective=objective,
                seed=args.seed,
                latency_runs=args.runs,
                latency_batch=args.batch,
            )
        except NoCandidateFits as exc:
            print(f"== {name}: {exc}\n")
            continue
        b = profile.budgets
        print(
            f"== {name} (passes {', '.join(profile.compression.passes)}; objective {objective}; "
            f"{report.intra_op_threads} threads here (profile "
            f"{profile.runtime.intra_op_threads}); budgets {b.max_size_bytes:,} B, "
            f"{b.max_latency_ms} ms, drop {b.max_accuracy_drop}; "
            f"{report.calibration_rows} calibration / {report.evaluation_rows} held-out rows; "
            f"{time.monotonic() - t0:.1f} s)"
        )
        print(table(report))
        for s in report.skipped:
            print(f"  skipped {s['candidate']}: {s['why']}")
        if name == "x86-edge":
            print(verdict(report, 3.5, 1.5))
        elif name == extra.name:
            print(verdict(report, 10.0, None))
        print()


if __name__ == "__main__":
    main()
