"""One MoLE training step vs one plain supernet training step, same subnets and batch, interleaved.

    python benchmarks/bench_train_step.py                                  # fmnist, batch 128, 2 threads
    python benchmarks/bench_train_step.py --space autoformer-t --batch 4 --steps 6
    python benchmarks/bench_train_step.py --space fmnist --space autoformer-t --batch 128 --batch 4

Both steps are `taslora_core.train.loop.train_step` (forward, loss, backward, gradient all-reduce, optimiser
step) exactly as training runs them: the plain step trains every supernet weight with AutoFormer's AdamW; the
MoLE step trains experts (AdamW) and router (SGD, past warm-up) on the frozen supernet. Each round samples one
subnet and times both steps on it, alternating which runs first. "router+merge" is the router forward plus the
merge of the routed experts into per-layer weight updates (`MoLEModel.deltas`: one batched matmul per layer and
sliced shape), alone (forward) and with its backward pass, timed in the same rounds; its share is relative to
the MoLE step. The same rounds also time the merge as it was before batching (one matmul per block and layer,
the reference of tests/test_merge.py) with its backward pass, so old and new shares are side by side.
Prints a markdown table.
Numbers are medians over the rounds. For stable CPU numbers on a shared machine run with
OMP_WAIT_POLICY=PASSIVE (set below when not already set).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from timm.loss import LabelSmoothingCrossEntropy  # noqa: E402

from taslora_core.distributed import DistContext  # noqa: E402
from taslora_core.mole import MoLEConfig, MoLEModel  # noqa: E402
from taslora_core.train.optim import mole_optimizers, supernet_optimizers  # noqa: E402
from taslora_core.space import SearchSpace  # noqa: E402
from taslora_core.subnet import sample_subnet  # noqa: E402
from taslora_core.supernet import Supernet  # noqa: E402
from taslora_core.train import MoLETask, SupernetTask  # noqa: E402
from taslora_core.train.loop import autocast, train_step  # noqa: E402


def _per_layer_reference():
    """`reference_deltas(experts, subnet, probs)` of tests/test_merge.py: the merge before batching."""
    spec = importlib.util.spec_from_file_location("test_merge", Path(__file__).resolve().parents[1] / "tests" / "test_merge.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.reference_deltas


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def bench(space_name: str, batch: int, steps: int, warmup: int, device: torch.device, amp: bool, seed: int) -> dict:
    """Median timings (seconds) of the plain and the MoLE step on the same subnets and batch."""
    space = SearchSpace.preset(space_name)
    torch.manual_seed(seed)
    plain_net = Supernet(space, drop_path_rate=0.1).to(device)
    mole_net = copy.deepcopy(plain_net)
    model = MoLEModel(mole_net, MoLEConfig()).to(device)
    ctx = DistContext(device=device)
    total = steps + warmup
    plain = SupernetTask(plain_net, supernet_optimizers(plain_net, 1e-4, 10 * total, 0), None, [], ctx, amp)
    mole = MoLETask(model, mole_optimizers(model.experts, model.router, 10 * total, 0, expert_lr=1e-4, router_lr=1e-3),
                    None, [], ctx, amp)
    criterion = LabelSmoothingCrossEntropy(0.1)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, space.in_chans, space.img_size, space.img_size, generator=gen).to(device)
    labels = torch.randint(0, space.num_classes, (batch,), generator=gen).to(device)
    rng = random.Random(seed)
    per_layer_deltas = _per_layer_reference()
    rows: dict[str, list[float]] = {"plain": [], "mole": [], "merge_fwd": [], "merge_fwd_bwd": [], "old_merge_fwd_bwd": []}
    plain_net.train()
    model.train()
    for i in range(total):
        sn = sample_subnet(space, rng)
        plain.optim.prepare(i)
        mole.optim.prepare(i)

        def run_plain() -> None:
            train_step(plain, images, labels, sn, criterion, ctx, amp)

        def run_mole() -> None:
            train_step(mole, images, labels, sn, criterion, ctx, amp)

        def merge_fwd() -> None:
            with torch.no_grad(), autocast(ctx, amp):
                model.deltas(sn)

        def merge_fwd_bwd(merge=lambda: model.deltas(sn)) -> None:
            with autocast(ctx, amp):
                deltas = merge()
            torch.autograd.backward(list(deltas.values()), [torch.ones_like(d) for d in deltas.values()])

        def old_merge_fwd_bwd() -> None:
            merge_fwd_bwd(lambda: per_layer_deltas(model.experts, sn, model.routing(sn)))

        order = [("plain", run_plain), ("mole", run_mole)]
        if i % 2:
            order.reverse()
        timings = {name: _timed(fn, device) for name, fn in order}
        timings["merge_fwd"] = _timed(merge_fwd, device)
        mole.optim.zero_grad()
        merges = [("merge_fwd_bwd", merge_fwd_bwd), ("old_merge_fwd_bwd", old_merge_fwd_bwd)]
        for name, fn in merges if i % 2 else reversed(merges):
            timings[name] = _timed(fn, device)
            mole.optim.zero_grad()
        if i >= warmup:
            for k, v in timings.items():
                rows[k].append(v)
    med = {k: statistics.median(v) for k, v in rows.items()}
    paired = [m / p for m, p in zip(rows["mole"], rows["plain"])]
    return {"space": space_name, "batch": batch, "steps": steps, "median": med,
            "ratio_of_medians": med["mole"] / med["plain"], "median_paired_ratio": statistics.median(paired)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", action="append", help="fmnist, autoformer-t, ... (repeatable; default fmnist)")
    parser.add_argument("--batch", action="append", type=int, help="batch per --space (default 128 fmnist, 4 otherwise)")
    parser.add_argument("--steps", type=int, default=30, help="measured rounds per space")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spaces = args.space or ["fmnist"]
    batches = args.batch or [128 if s == "fmnist" else 4 for s in spaces]
    if len(batches) != len(spaces):
        parser.error("give one --batch per --space")
    device = torch.device(args.device)
    results = [bench(s, b, args.steps, args.warmup, device, args.amp, args.seed) for s, b in zip(spaces, batches)]
    print(f"\ntorch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
          f"{args.threads} threads, amp {'bf16' if args.amp else 'off'}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}\n")
    print("| space | batch | rounds | plain step (ms) | MoLE step (ms) | MoLE / plain | paired ratio (median) "
          "| router+merge fwd (ms, % of MoLE step) | router+merge fwd+bwd (ms, %) "
          "| per-layer merge before batching, fwd+bwd (ms, %) | new / old merge | plain img/s | MoLE img/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["median"]
        print(f"| {r['space']} | {r['batch']} | {r['steps']} | {1e3 * m['plain']:.1f} | {1e3 * m['mole']:.1f} | "
              f"{r['ratio_of_medians']:.3f} | {r['median_paired_ratio']:.3f} | "
              f"{1e3 * m['merge_fwd']:.2f} ({100 * m['merge_fwd'] / m['mole']:.1f}%) | "
              f"{1e3 * m['merge_fwd_bwd']:.2f} ({100 * m['merge_fwd_bwd'] / m['mole']:.1f}%) | "
              f"{1e3 * m['old_merge_fwd_bwd']:.2f} ({100 * m['old_merge_fwd_bwd'] / m['mole']:.1f}%) | "
              f"{m['merge_fwd_bwd'] / m['old_merge_fwd_bwd']:.2f} | "
              f"{r['batch'] / m['plain']:.0f} | {r['batch'] / m['mole']:.0f} |")


if __name__ == "__main__":
    main()
