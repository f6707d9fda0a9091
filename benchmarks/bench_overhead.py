"""Zero-overhead latency: folded MoLE subnet vs the same subnet without LoRA vs the unmerged MoLE model.

Random supernet weights and random (non-zero) experts; one subnet per space. Measured side by side in one run,
interleaved A/B after warm-up (`taslora_deploy.overhead.interleaved_latency`):

- torch eager on the chosen device: baseline (no LoRA) vs folded, and folded vs unmerged (router + LoRA
  branches evaluated at run time);
- onnxruntime CPU (when --onnx): baseline vs folded ONNX graphs (also their operator histograms).

    python benchmarks/bench_overhead.py                                # fmnist + autoformer-t on CPU
    python benchmarks/bench_overhead.py --device cuda --batch 1 --batch 64

Prints a markdown table of medians and ratios (with the p10..p90 spread of the per-pair ratios).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from taslora_core.subnet import sample_subnet  # noqa: E402
from taslora_core.testing import random_mole  # noqa: E402
from taslora_deploy.fold import UnmergedMoLEViT, fold_subnet  # noqa: E402
from taslora_deploy.overhead import interleaved_latency, ort_runner, torch_runner  # noqa: E402


def _models(space_name: str, seed: int, device: str):
    mole = random_mole(space_name, seed, expert_std=0.05)
    sup = mole.supernet
    sub = sample_subnet(sup.space, random.Random(seed))
    folded = fold_subnet(sup, sub, mole).model
    base = fold_subnet(sup, sub).model
    unmerged = UnmergedMoLEViT(sup, sub, mole)
    return sub, folded.to(device), base.to(device), unmerged.to(device)


def _row(label: str, runtime: str, batch: int, res: dict) -> str:
    return (f"| {label} | {runtime} | {batch} | {res['median_a_ms']:.3f} | {res['median_b_ms']:.3f} | "
            f"**{res['ratio_median']:.3f}** ({res['ratio_p10']:.3f}..{res['ratio_p90']:.3f}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", action="append", help="fmnist, autoformer-t, ... (repeatable; default both)")
    ap.add_argument("--batch", action="append", type=int, help="batch sizes (default 1 and 8)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True, help="also onnxruntime CPU")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spaces, batches = args.space or ["fmnist", "autoformer-t"], args.batch or [1, 8]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    lines = ["| space / comparison (A vs B) | runtime | batch | A median ms | B median ms | B/A median ratio (p10..p90) |",
             "|---|---|---|---|---|---|"]
    for space in spaces:
        sub, folded, base, unmerged = _models(space, args.seed, args.device)
        shape = folded.input_shape
        for b in batches:
            runtime = f"torch eager {args.device}"
            res = interleaved_latency(torch_runner(base, b, shape, device=args.device),
                                      torch_runner(folded, b, shape, device=args.device),
                                      warmup_s=args.warmup_s, iters=args.iters)
            lines.append(_row(f"{space}: no-LoRA vs folded", runtime, b, res))
            res = interleaved_latency(torch_runner(folded, b, shape, device=args.device),
                                      torch_runner(unmerged, b, shape, device=args.device),
                                      warmup_s=args.warmup_s, iters=max(30, args.iters // 2))
            lines.append(_row(f"{space}: folded vs unmerged MoLE", runtime, b, res))
        if args.onnx:
            from taslora_deploy.onnx_export import export_onnx, op_histogram

            with tempfile.TemporaryDirectory() as tmp:
                fa, fb = Path(tmp) / "base.onnx", Path(tmp) / "folded.onnx"
                export_onnx(base.cpu(), fa, input_shape=shape)
                export_onnx(folded.cpu(), fb, input_shape=shape)
                same = op_histogram(fa) == op_histogram(fb)
                for b in batches:
                    res = interleaved_latency(ort_runner(fa, b, shape, threads=args.threads),
                                              ort_runner(fb, b, shape, threads=args.threads),
                                              warmup_s=args.warmup_s, iters=args.iters)
                    lines.append(_row(f"{space}: no-LoRA vs folded (same ops: {same})", "onnxruntime cpu", b, res))
    print(f"device: {device_name}; torch {torch.__version__}; threads {args.threads}; iters {args.iters}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
