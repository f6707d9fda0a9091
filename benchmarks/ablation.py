"""Does TAS-LoRA work? The paper's ablation at small scale, on the fmnist space.

From ONE trained supernet, with equal training budgets and several seeds, compare:
  (a) supernet alone, (b) full fine-tuning, (c) single LoRA (K = 1), (d) MoLE with random router init,
  (e) MoLE with group-wise router init (TAS-LoRA).
For each: Fashion-MNIST *test* top-1 of the subnet found by the same search under the same FLOPs budget,
mean test top-1 of a fixed set of random subnets, and the feature-collapse measure (mean off-diagonal
cosine similarity of penultimate features of 8 subnets on the first 1000 test images). Mean and spread
over seeds go to a markdown table.

    python benchmarks/ablation.py                          # trains its own supernet; ~1 h on 2 CPU cores
    python benchmarks/ablation.py --supernet taslora-runs/supernets/<run> --seeds 0 1 2

Finished (method, seed) cells are appended to <out>/ablation.jsonl and skipped on a re-run, so a killed
benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from taslora_cli.app import run_command
from taslora_core.analysis import feature_collapse, mean_off_diagonal, sample_distinct
from taslora_core.data import DataConfig, build_data, make_loaders
from taslora_core.evaluate import evaluate
from taslora_core.run_io import load_checkpoint
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_core.workspace import runs

METHODS: dict[str, tuple[str, list[str]]] = {
    # name -> (what it trains, extra `taslora train` arguments); "supernet" trains nothing
    "supernet": ("none", []),
    "finetune": ("supernets", ["--mode", "finetune"]),  # its LR is --finetune-lr (set in _cell)
    "single-lora": ("mole", ["--mode", "single-lora"]),
    "mole-random": ("mole", ["--router-init", "random"]),
    "tas-lora": ("mole", []),
}
LABELS = {
    "supernet": "(a) supernet alone", "finetune": "(b) full fine-tuning", "single-lora": "(c) single LoRA (K=1)",
    "mole-random": "(d) MoLE, random router init", "tas-lora": "(e) MoLE, group-wise init (TAS-LoRA)",
}
PAPER = {"supernet": "74.9", "finetune": "≈ 74.9 (\"almost no gain\")", "single-lora": "75.0",
         "mole-random": "75.4", "tas-lora": "75.7"}


def _run_named(workdir: Path, kind: str, name: str) -> Path:
    found = [r.path for r in runs(workdir, kind) if r.name.endswith(f"-{name}")]
    if not found:
        raise SystemExit(f"run '{name}' of kind {kind} not found in {workdir}")
    return found[-1]


def _test_batches(n: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cfg = DataConfig.fmnist()
    bundle = build_data(cfg, val_size=10)
    batches = list(make_loaders(bundle, cfg, batch_size=500, num_workers=0).test)
    if n is None:
        return batches
    images = torch.cat([b[0] for b in batches])[:n]
    labels = torch.cat([b[1] for b in batches])[:n]
    return [(images, labels)]


def _cell(args, workdir: Path, supernet_dir: Path, method: str, seed: int, test, test_small, fixed: list[Subnet]) -> dict:
    kind, extra = METHODS[method]
    t0 = time.perf_counter()
    if kind == "none":
        ckpt = supernet_dir
    else:
        name = f"abl-{method}-s{seed}"
        lr = args.finetune_lr if method == "finetune" else args.expert_lr
        run_command(f"train {method} seed {seed}", [
            "train", "--supernet", str(supernet_dir), *extra, "--epochs", str(args.epochs), "--expert-lr", str(lr),
            "--warmup-epochs", str(args.warmup_epochs), "--name", name, "--seed", str(seed), "--quiet",
            "--workdir", str(workdir), *(["--train-subset", str(args.train_subset)] if args.train_subset else [])])
        ckpt = _run_named(workdir, kind, name)
    train_s = time.perf_counter() - t0
    best_path = args.out / "searches" / f"{method}-s{seed}.json"
    best_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_command(f"search {method} seed {seed}", [
        "search", "--ckpt", str(ckpt), "--flops", args.flops, "--population", str(args.population),
        "--iterations", str(args.iterations), "--val-subset", str(args.val_subset), "--seed", str(seed),
        "--out", str(best_path), "--workdir", str(workdir)])
    search_s = time.perf_counter() - t0
    loaded = load_checkpoint(ckpt)
    best = Subnet.load(best_path)
    searched = evaluate(loaded.supernet, best, test, loaded.mole)
    random_top1 = [evaluate(loaded.supernet, s, test, loaded.mole).top1 for s in fixed]
    collapse = feature_collapse(loaded.supernet, fixed[:8], test_small, loaded.mole)
    cos = collapse.with_experts if collapse.with_experts is not None else collapse.without_experts
    return {"method": method, "seed": seed, "ckpt": str(ckpt), "best": best.to_dict(),
            "searched_top1": searched.top1, "searched_loss": searched.loss,
            "random_top1_mean": statistics.fmean(random_top1), "random_top1": random_top1,
            "collapse_mean_cos": mean_off_diagonal(cos), "train_s": round(train_s, 1), "search_s": round(search_s, 1)}


def _fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def table(records: list[dict], args) -> str:
    """The markdown table of the ablation (mean ± sample std over seeds)."""
    lines = [
        f"| method | searched subnet top-1 (%) | {args.random_subnets} random subnets, mean top-1 (%) | collapse: mean cos | seeds | paper, ImageNet Tiny (%) |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        rs = [r for r in records if r["method"] == method]
        lines.append(
            f"| {LABELS[method]} | {_fmt([r['searched_top1'] for r in rs])} | {_fmt([r['random_top1_mean'] for r in rs])} | "
            f"{_fmt([r['collapse_mean_cos'] for r in rs], 1.0, 4)} | {len(rs)} | {PAPER[method]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supernet", type=Path, help="Trained fmnist supernet run (default: train one).")
    parser.add_argument("--supernet-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1, help="Equal training budget of every trained method.")
    parser.add_argument("--warmup-epochs", type=int, default=0, help="MoLE warm-up epochs (router frozen).")
    parser.add_argument("--expert-lr", type=float, default=2e-3, help="LoRA experts' LR (paper 5e-4 for 50 epochs).")
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="LR of full fine-tuning (AdamW).")
    parser.add_argument("--supernet-lr", type=float, default=4e-3, help="Base LR per 512 images of supernet training.")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--flops", default="6M", help="Search budget (AutoFormer counter).")
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--val-subset", type=int, default=2000)
    parser.add_argument("--random-subnets", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/ablation-runs"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / "workspace"
    started = time.perf_counter()
    supernet_dir = args.supernet
    if supernet_dir is None:
        existing = [r.path for r in runs(workdir, "supernets") if r.name.endswith("-abl-supernet")]
        if existing:
            supernet_dir = existing[-1]
        else:
            run_command("supernet", ["supernet", "train", "--space", "fmnist", "--data", "fmnist", "--epochs",
                                     str(args.supernet_epochs), "--lr", str(args.supernet_lr), "--name", "abl-supernet", "--quiet", "--workdir", str(workdir)])
            supernet_dir = _run_named(workdir, "supernets", "abl-supernet")
    space = load_checkpoint(supernet_dir).supernet.space
    fixed = sample_distinct(space, args.random_subnets, seed=1234)
    test, test_small = _test_batches(), _test_batches(1000)
    log = args.out / "ablation.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    records = [r for r in done if r.get("supernet") == str(supernet_dir)]
    for seed in args.seeds:
        for method in args.methods:
            if any(r["method"] == method and r["seed"] == seed for r in records):
                continue
            rec = {**_cell(args, workdir, supernet_dir, method, seed, test, test_small, fixed), "supernet": str(supernet_dir)}
            records.append(rec)
            with log.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(f"[ablation] {method} seed {seed}: searched {rec['searched_top1']:.4f}, random mean {rec['random_top1_mean']:.4f}, "
                  f"collapse {rec['collapse_mean_cos']:.4f}", flush=True)
    md = table(records, args)
    command = "python benchmarks/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"{md}\n\nspace {space.name}; supernet {supernet_dir}; {args.epochs} epoch(s) per trained method "
            f"(experts LR {args.expert_lr:g}, fine-tuning LR {args.finetune_lr:g}); search "
            f"--flops {args.flops} --population {args.population} --iterations {args.iterations} --val-subset "
            f"{args.val_subset}; test set 10,000 images; wall time {time.perf_counter() - started:.0f} s.\n\n`{command}`\n")
    (args.out / "ablation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
