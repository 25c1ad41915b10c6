"""Compression of a MiniLM-sized sentence encoder (6 layers, hidden 384, vocab 30522: 22.7M
parameters, half of them embeddings) trained in code on a made-up language, at batch 1 and
sequence 64 on this host: fp32, plain ``onnxruntime.quantization.quantize_dynamic`` (what a
user would do instead, per-channel off and on) and edgefleet's choice per shipped profile,
timed side by side in one run with the profile's threads (at most this host's cores).

Budgets (issue 11): the chosen int8 variant >= 3.8x smaller than fp32, no slower than plain
quantize_dynamic, worst-row cosine to fp32 >= 0.995; with int4 allowed >= 6x smaller at a
worst-row cosine >= 0.98. Each profile's latency budget is lifted (this host is not the
device; its size and worst-row budgets stand), and its metric is cosine to fp32.
Run: .venv/bin/python bench/compress_encoder.py [--runs 200] [--rows 256] [--steps 400]
     [--contrast-steps 60] [--only x86-edge ...] [--distill]
The trained weights are cached in ~/.cache/edgefleet-bench/ (training takes ~20 min).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from edgefleet.controller.compress import (
    CompressionReport,
    NoCandidateFits,
    PassOptions,
    compress,
    cosine_rows,
    load_eval_data,
    local_threads,
    split_eval_data,
    time_side_by_side,
)
from edgefleet.controller.compress._measure import open_session, run_outputs
from edgefleet.controller.home import builtin_profiles_dir, load_profiles
from edgefleet.harness import (
    BENCH_ENCODER,
    contrast_encoder,
    export_encoder,
    train_encoder,
    write_encoder_eval_npz,
)

SEQ = 64
CALIBRATION_FRACTION = 0.25
INT8_BUDGET = (3.8, 0.995)  # x smaller, worst-row cosine
INT4_BUDGET = (6.0, 0.98)


def plain_quantize_dynamic(fp32: Path, out: Path, per_channel: bool) -> Path:
    """What a user does with one call of the library: defaults, no pre-processing."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(fp32), str(out), per_channel=per_channel)
    return out


def outlier_ratio(model: object, npz: Path) -> float:
    """The largest |hidden state| over the median |hidden state| of the last layer: a
    trained transformer grows a few channels far larger than the rest."""
    import torch

    with np.load(npz) as data, torch.no_grad():
        feeds = {k: torch.from_numpy(data[k][:32]) for k in data.files}
        h = model.hidden_states(**feeds).abs()  # type: ignore[attr-defined]
    channel = h.amax(dim=(0, 1))
    return float(channel.max() / channel.median())


def pairwise_cosine(model: Path, npz: Path) -> float:
    """The mean cosine between the embeddings of different sentences: near 1, every
    sentence gets the same vector and a cosine to fp32 would measure nothing."""
    data = load_eval_data(npz, model)
    out = run_outputs(open_session(model, 2), data.take(np.arange(min(64, len(data)))))
    unit = out / np.linalg.norm(out, axis=1, keepdims=True)
    sims = unit @ unit.T
    return float((sims.sum() - np.trace(sims)) / (len(sims) * (len(sims) - 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="interleaved latency rounds")
    parser.add_argument("--rows", type=int, default=256, help="rows in eval.npz")
    parser.add_argument("--steps", type=int, default=400, help="masked-token training steps")
    parser.add_argument("--contrast-steps", type=int, default=60, help="SimCSE steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=[], help="profile names to run")
    parser.add_argument(
        "--distill", action="store_true", help="give the torch model: distil a 3-layer student"
    )
    args = parser.parse_args()

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cache = Path.home() / ".cache" / "edgefleet-bench" / f"encoder-{args.steps}-{args.seed}.pt"
    t0 = time.monotonic()
    model = train_encoder(
        BENCH_ENCODER, steps=args.steps, batch=32, seq=SEQ, lr=1e-3, seed=args.seed, cache=cache
    )
    contrasted = cache.with_name(f"{cache.stem}-simcse-{args.contrast_steps}.pt")
    model = contrast_encoder(
        model, steps=args.contrast_steps, batch=32, seq=SEQ, lr=3e-4, cache=contrasted
    )
    work = Path(tempfile.mkdtemp(prefix="edgefleet-encoder-"))
    fp32 = export_encoder(model, work / "encoder.onnx")
    data = write_encoder_eval_npz(work / "eval.npz", args.rows, SEQ, BENCH_ENCODER.vocab)
    params = sum(p.numel() for p in model.bert.parameters())
    spread = pairwise_cosine(fp32, data)
    print(
        f"encoder: {params / 1e6:.1f}M parameters, fp32 {fp32.stat().st_size:,} B, "
        f"last-layer outlier channel {outlier_ratio(model, data):.1f}x the median "
        f"; mean cosine between different sentences {spread:.3f} "
        f"({time.monotonic() - t0:.0f} s to train or load)"
    )
    print(f"machine: {os.cpu_count()} CPUs; batch 1, sequence {SEQ}; {args.runs} rounds\n")

    plain = {
        f"plain quantize_dynamic per_channel={pc}": plain_quantize_dynamic(
            fp32, work / f"plain-pc{int(pc)}.onnx", pc
        )
        for pc in (False, True)
    }
    chosen: dict[str, tuple[Path, CompressionReport]] = {}
    options = PassOptions(calibration_methods=("minmax",), distill_epochs=10, distill_lr=2e-4)
    threads = 1
    for name, profile in load_profiles([builtin_profiles_dir()]).items():
        if args.only and name not in args.only:
            continue
        budgets = profile.budgets.model_copy(update={"max_latency_ms": 10_000.0})
        profile = profile.model_copy(update={"budgets": budgets})
        threads = local_threads(profile.runtime.intra_op_threads)
        t0 = time.monotonic()
        try:
            report = compress(
                fp32, data, profile, work / name, metric="cosine", options=options,
                torch_model=model if args.distill else None,
                seed=args.seed, calibration_fraction=CALIBRATION_FRACTION,
                latency_runs=args.runs,
            )  # fmt: skip
        except NoCandidateFits as exc:
            print(f"== {name}: {exc}\n")
            continue
        kept = work / f"chosen-{name}.onnx"
        shutil.copyfile(report.chosen.path, kept)  # type: ignore[arg-type]
        chosen[f"edgefleet {name}: {report.chosen.name}"] = (kept, report)
        print(
            f"== {name}: {len(report.candidates)} candidates in {time.monotonic() - t0:.0f} s, "
            f"budgets {budgets.max_size_bytes:,} B, worst-row drop {budgets.max_worst_drop}, "
            f"objective {report.objective}; chosen {report.chosen.name}"
        )
        for c in report.candidates:
            mark = "*" if c.name == report.chosen.name else " "
            print(
                f" {mark} {c.name:44} {report.reference.size_bytes / c.size_bytes:5.2f}x "
                f"cos mean {c.metric:.5f} worst {c.metric_worst:.5f} p50 {c.latency_ms_p50:7.2f}"
                f"  {'; '.join(b.text for b in c.breaches)}"
            )
        for s in report.skipped:
            print(f"   skipped {s['candidate']}: {s['why'][:100]}")
        print()

    # every model on the same held-out rows as compress, then timed together
    _, held_out = split_eval_data(load_eval_data(data, fp32), CALIBRATION_FRACTION, args.seed)
    models = {"fp32": fp32, **plain, **{k: v[0] for k, v in chosen.items()}}
    reference = run_outputs(open_session(fp32, threads), held_out)
    sims = {
        k: cosine_rows(run_outputs(open_session(p, threads), held_out), reference)
        for k, p in models.items()
    }
    timing = time_side_by_side(
        models, held_out.rows(0, 1), intra_op_threads=threads, runs=args.runs, seed=args.seed
    )
    size = {k: p.stat().st_size for k, p in models.items()}
    print(f"side by side, {threads} threads, {args.runs} rounds, {len(held_out)} held-out rows:")
    print(
        f"  {'model':58} {'bytes':>12} {'x smaller':>9} {'cos mean':>9} {'cos worst':>9} "
        f"{'p50 ms':>8} {'p95 ms':>8}"
    )
    for k in models:
        print(
            f"  {k:58} {size[k]:>12,} {size['fp32'] / size[k]:>9.2f} {np.mean(sims[k]):>9.5f} "
            f"{np.min(sims[k]):>9.5f} {timing[k].latency_ms_p50:>8.2f} "
            f"{timing[k].latency_ms_p95:>8.2f}"
        )
    best_plain = max(plain, key=lambda k: float(np.min(sims[k])))
    fastest_plain = min(timing[k].latency_ms_p50 for k in plain)
    print(
        f"\nbaseline (best plain setting by worst-row cosine): {best_plain}: worst "
        f"{np.min(sims[best_plain]):.5f}, {size['fp32'] / size[best_plain]:.2f}x smaller"
    )
    for k, (_, report) in chosen.items():
        int4 = any(s["pass"] == "int4_weight" for s in report.chosen.recipe["steps"])
        min_smaller, min_worst = INT4_BUDGET if int4 else INT8_BUDGET
        smaller, worst = size["fp32"] / size[k], float(np.min(sims[k]))
        checks = [f"{smaller:.2f}x smaller (need >= {min_smaller})",
                  f"worst cosine {worst:.5f} (need >= {min_worst})"]  # fmt: skip
        ok = smaller >= min_smaller and worst >= min_worst
        if not int4:
            p50 = timing[k].latency_ms_p50
            checks.append(f"p50 {p50:.2f} ms vs plain {fastest_plain:.2f} ms (need <=)")
            ok = ok and p50 <= fastest_plain
        print(f"{'MET' if ok else 'NOT MET'}: {k}: " + ", ".join(checks))


if __name__ == "__main__":
    main()
