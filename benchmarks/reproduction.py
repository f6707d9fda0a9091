"""Does TAS-LoRA pay off on a *converged* supernet? The paper's ablation, measured fairly.

Successor of `benchmarks/ablation.py` (which ran on the quickstart's 6-epoch supernet). Everything here starts
from ONE converged fmnist supernet run (`--supernet`); every trained method gets the same budget, by default
10% of the supernet's epochs (the paper's 50 of 500). Stages, each resumable (finished cells are appended to
`<out>/cells.jsonl` and skipped on a re-run; per-image test results go to `<out>/arrays/*.npz`):

  sweep     LoRA alpha, router LR and warm-up for TAS-LoRA, judged on the held-out *validation* split (mean
            loss over fixed random subnets, paired with the supernet alone) — never on the test set.
  headroom  the searched subnet and 3 fixed random subnets materialised and fine-tuned ALONE (all weights,
            AdamW, cosine, no mixup) for the same budget: the ceiling of subnet-specific correction.
  ablation  (a) supernet alone, (b) full fine-tuning, (c) single LoRA (K=1), (d) MoLE random router init,
            (e) TAS-LoRA (group-wise init) x seeds: train, the same search, per-image test results of the
            searched subnet and of 20 fixed random subnets, feature collapse, and what moved (routing distance
            from its initialisation per group, ||dW|| / ||W|| of the folded experts per layer type).
  report    markdown + JSON: means, and paired differences against (a) on the same test images with
            bootstrap 95% intervals; the convergence gate (fine-tuning gain over the fixed subnets).
  ship      copy the supernet, the seed-0 TAS-LoRA run and its searched subnet to benchmarks/reproduction/
            with manifest.json (claims checked with `taslora eval`).

    python benchmarks/reproduction.py all --supernet /path/to/supernets/<run>
    python benchmarks/reproduction.py report
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from taslora_cli.app import run_command
from taslora_core import flops
from taslora_core.analysis import feature_collapse, mean_off_diagonal, paired_bootstrap, sample_distinct
from taslora_core.data import build_data, load_test_batches, make_loaders, make_mixup, make_train_loss
from taslora_core.run_data import RecordedData, RunData, resolve_run_data
from taslora_core.evaluate import per_image as evaluate_per_image
from taslora_core.mole import MoLEModel
from taslora_core.plots import plot_training_curves, training_curve_points
from taslora_core.run_io import load_checkpoint
from taslora_core.slicing import LINEAR_LAYERS, LINEAR_PATHS, block_dims, weight
from taslora_core.subnet import Subnet, smallest_subnet
from taslora_core.train.run_files import recorded_epochs
from taslora_core.workspace import is_finished, runs
from taslora_deploy.standalone import materialize

METHODS: dict[str, tuple[str, list[str]]] = {
    # name -> (run kind it writes, extra `taslora train` arguments); "supernet" trains nothing
    "supernet": ("none", []),
    "finetune": ("supernets", ["--mode", "finetune"]),
    "single-lora": ("mole", ["--mode", "single-lora"]),
    "mole-random": ("mole", ["--router-init", "random"]),
    "tas-lora": ("mole", []),
    # diagnostics (run only when named with --methods): does the paper's block-position axis, a larger rank or a
    # longer budget let the experts capture more of the headroom?
    "tas-lora-pos": ("mole", ["--router-position-heads"]),
    "tas-lora-r32": ("mole", ["--rank", "32"]),
    "tas-lora-3x": ("mole", []),
}
PAPER_METHODS = ["supernet", "finetune", "single-lora", "mole-random", "tas-lora"]
EPOCH_FACTOR = {"tas-lora-3x": 3}  # budget multiple of a diagnostic method
LABELS = {
    "supernet": "(a) supernet alone", "finetune": "(b) full fine-tuning", "single-lora": "(c) single LoRA (K=1)",
    "mole-random": "(d) MoLE, random router init", "tas-lora": "(e) TAS-LoRA (group-wise init)",
    "headroom": "(f) headroom: subnet fine-tuned alone",
    "tas-lora-pos": "(e2) TAS-LoRA, per-position router heads", "tas-lora-r32": "(e3) TAS-LoRA, rank 32",
    "tas-lora-3x": "(e4) TAS-LoRA, 3x the budget",
}
PAPER = {"supernet": "74.9", "finetune": "≈ 74.9", "single-lora": "75.0", "mole-random": "75.4", "tas-lora": "75.7",
         "headroom": "–", "tas-lora-pos": "–", "tas-lora-r32": "–", "tas-lora-3x": "–"}
FIXED_SEED = 1234  # the fixed random subnets (same as benchmarks/ablation.py)
BOOTSTRAP = 2000


# ---------------------------------------------------------------------- data and per-image evaluation
@dataclass
class Batches:
    """Pre-normalised evaluation batches of one split."""

    items: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def count(self) -> int:
        return sum(len(y) for _, y in self.items)


def run_data(args) -> RunData:
    """The supernet run's data recipe (or `--data` with that recipe; an imported AutoFormer supernet records none,
    so `--data` gets its preset) and its held-out split when it saved one (else one is carved with seed 0)."""
    space = load_checkpoint(args.supernet).supernet.space
    return resolve_run_data(space, RecordedData.read(args.supernet, "space.json"), args.data,
                            data_override="keep_recipe", fit_space=True, reuse_split="always")


def test_batches(args, n: int | None = None) -> Batches:
    """The test set of the run's data (Fashion-MNIST's 10,000 test images, a folder's val/; or the first n)."""
    batches = load_test_batches(run_data(args).config)
    if n is not None:
        images, labels = torch.cat([b[0] for b in batches])[:n], torch.cat([b[1] for b in batches])[:n]
        batches = [(images, labels)]
    return Batches(batches)


def val_batches(args, n: int | None = None) -> Batches:
    """The supernet run's held-out validation split (carved from the training images, saved in split.json)."""
    rd = run_data(args)
    bundle = build_data(rd.config, split=rd.split, val_subset=n)
    return Batches(list(make_loaders(bundle, rd.config, batch_size=500, num_workers=args.workers).val))


def per_image(loaded, subnet: Subnet, batches: Batches, use_experts: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(correct as uint8, cross-entropy as float32) for every image: the router runs once, experts merged once."""
    correct, loss = evaluate_per_image(loaded.supernet, subnet, batches.items, loaded.mole, use_experts)
    return correct.numpy().astype(np.uint8), loss.numpy()


@torch.no_grad()
def model_per_image(model: torch.nn.Module, batches: Batches) -> tuple[np.ndarray, np.ndarray]:
    """Per-image results of a standalone model."""
    model.eval()
    correct, losses = [], []
    for x, y in batches.items:
        logits = model(x)
        correct.append((logits.argmax(-1) == y).to(torch.uint8))
        losses.append(F.cross_entropy(logits, y, reduction="none"))
    return torch.cat(correct).numpy(), torch.cat(losses).float().numpy()


def bootstrap_ci(diff: np.ndarray) -> tuple[float, float, float]:
    """Mean of a per-image paired difference and its 95% bootstrap interval (taslora_core.analysis)."""
    d = paired_bootstrap(torch.from_numpy(np.asarray(diff, dtype=np.float64)), resamples=BOOTSTRAP)
    return d.mean, d.low, d.high


# ---------------------------------------------------------------------- bookkeeping
class Store:
    """cells.jsonl (one JSON record per finished cell) + arrays/<key>.npz (per-image results)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.log = out / "cells.jsonl"
        (out / "arrays").mkdir(parents=True, exist_ok=True)

    def records(self, stage: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in rows if stage is None or r.get("stage") == stage]

    def find(self, stage: str, key: str) -> dict[str, Any] | None:
        return next((r for r in self.records(stage) if r["key"] == key), None)

    def add(self, record: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        if arrays:
            np.savez_compressed(self.out / "arrays" / f"{record['stage']}-{record['key']}.npz", **arrays)
        with self.log.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        return record

    def arrays(self, stage: str, key: str) -> dict[str, np.ndarray]:
        with np.load(self.out / "arrays" / f"{stage}-{key}.npz") as data:
            return {k: data[k] for k in data.files}


def _named_runs(workdir: Path, kind: str, name: str) -> list[Path]:
    """The run folders called `name`, oldest first, finished or not."""
    return [r.path for r in runs(workdir, kind, finished_only=False) if r.name.endswith(f"-{name}")]


def _run_named(workdir: Path, kind: str, name: str) -> Path | None:
    found = [p for p in _named_runs(workdir, kind, name) if is_finished(kind, p) and (p / "summary.json").exists()]
    return found[-1] if found else None


def _killed_named(workdir: Path, kind: str, name: str) -> Path | None:
    """The newest unfinished run called `name` that saved a training state (a killed run to resume), if any."""
    found = [p for p in _named_runs(workdir, kind, name)
             if not (p / "summary.json").exists() and (p / "train_state.pt").exists()]
    return found[-1] if found else None


def _train(args, workdir: Path, method: str, seed: int, name: str, hp: dict[str, Any]) -> Path:
    """Train one method (or reuse a finished run of the same name); returns its run folder."""
    kind, extra = METHODS[method]
    done = _run_named(workdir, kind, name)
    if done is not None:
        return done
    killed = _killed_named(workdir, kind, name)
    if killed is not None:  # the run's own settings continue it (train_config.json)
        run_command(f"train {name} (resumed)", ["train", "--resume", str(killed), "--workdir", str(workdir), "--quiet"])
        return _finished_named(workdir, kind, name)
    lr = args.finetune_lr if method == "finetune" else hp.get("expert_lr", args.expert_lr)
    epochs = args.epochs * EPOCH_FACTOR.get(method, 1)
    argv = ["train", "--supernet", str(args.supernet), "--epochs", str(epochs), "--expert-lr", str(lr),
            "--batch-size", str(args.batch_size), "--warmup-epochs", str(hp.get("warmup", args.warmup_epochs)),
            "--name", name, "--seed", str(seed), "--quiet", "--workdir", str(workdir), "--summary-subnets", "0",
            "--val-subset", "2000", "--save-every-steps", "200",
            *(["--train-subset", str(args.train_subset)] if args.train_subset else []),
            *(["--data", args.data] if args.data else [])]
    if method != "finetune":
        # the paper's methods take the paper's recipe whatever `taslora train`'s default is; a recipe arm's own
        # --recipe (in `extra`) comes later and wins
        argv += ["--lora-alpha", str(hp.get("alpha", args.alpha)), "--router-lr", str(hp.get("router_lr", args.router_lr)),
                 "--recipe", "paper"]
    argv += extra  # last: a method's own options win over the shared ones (the last of a repeated option counts)
    run_command(f"train {name}", argv)
    return _finished_named(workdir, kind, name)


def _finished_named(workdir: Path, kind: str, name: str) -> Path:
    run = _run_named(workdir, kind, name)
    if run is None:
        raise SystemExit(f"training {name} finished without a run folder in {workdir}")
    return run


def _search(args, ckpt: Path, seed: int, out: Path) -> Subnet:
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        run_command(f"search {out.stem}", [
            "search", "--ckpt", str(ckpt), "--flops", args.flops, "--population", str(args.population),
            "--iterations", str(args.iterations), "--val-subset", str(args.val_subset), "--seed", str(seed),
            "--out", str(out), "--workdir", str(args.out / "workspace"), *(["--data", args.data] if args.data else [])])
    return Subnet.load(out)


# ---------------------------------------------------------------------- stage: supernet (train or resume)
SUPERNET_NAME = "supernet"  # run-folder suffix of the supernet this stage trains in <out>/workspace


def find_supernet(workdir: Path) -> tuple[Path | None, bool]:
    """The newest supernet run this stage started in `workdir` and whether it finished (None: none started)."""
    found = [r.path for r in runs(workdir, "supernets", finished_only=False) if r.name.endswith(f"-{SUPERNET_NAME}")]
    if not found:
        return None, False
    return found[-1], (found[-1] / "summary.json").exists() and (found[-1] / "space.json").exists()


def stage_supernet(args, store: Store) -> Path:
    """Train the regime's supernet (AutoFormer's recipe, the converged reproduction's settings) or resume it.

    Idempotent: a finished run is reused, a killed one (train_state.pt) continues from its last checkpoint.
    """
    workdir = args.out / "workspace"
    run, finished = find_supernet(workdir)
    if run is not None and finished:
        return run
    if run is not None and (run / "train_state.pt").exists():
        argv = ["supernet", "train", "--resume", str(run), "--workdir", str(workdir), "--quiet"]
    else:
        argv = ["supernet", "train", "--space", args.space, "--data", args.data or "fmnist", "--epochs", str(args.supernet_epochs),
                "--batch-size", "128", "--lr", "4e-3", "--warmup-epochs", "3", "--min-lr", "1e-5", "--drop-path", "0.1",
                "--summary-subnets", "20", "--save-every-steps", "500", "--name", SUPERNET_NAME, "--seed", "0",
                "--quiet", "--workdir", str(workdir),
                *(["--train-subset", str(args.train_subset)] if args.train_subset else [])]
    t0 = time.perf_counter()
    run_command("supernet train", argv)
    run, finished = find_supernet(workdir)
    if run is None or not finished:
        raise SystemExit(f"supernet training finished without a finished run in {workdir}")
    store.add({"stage": "supernet", "key": f"{run.name}-{int(time.time())}", "run": str(run),
               "seconds": round(time.perf_counter() - t0, 1)})
    return run


# ---------------------------------------------------------------------- diagnostics: what moved
@torch.no_grad()
def what_moved(loaded, seed: int, subnets: list[Subnet]) -> dict[str, Any]:
    """Routing distance from its initialisation per group, own-expert share, and ||dW||/||W|| per layer type.

    The initial router is rebuilt exactly as `taslora train` built it (torch.manual_seed(seed) right before
    constructing the MoLE model).
    """
    mole = loaded.mole
    torch.manual_seed(seed)
    init = MoLEModel(loaded.supernet, mole.config)
    groups = mole.space.groups(include_depth=mole.router.config.include_depth)
    # expert g belongs to group g only in a mixture of one expert per group (not in factorised experts' parts)
    group_experts = mole.config.structure == "mixture" and mole.num_experts == len(groups)
    dist: dict[int, list[float]] = {}
    own: dict[int, list[float]] = {}
    mean_routing: dict[int, list[torch.Tensor]] = {}
    ratio: dict[str, list[float]] = {layer: [] for layer in LINEAR_LAYERS}
    params = dict(loaded.supernet.named_parameters())
    for sn in subnets:
        p, p0 = mole.routing(sn), init.routing(sn)
        deltas = mole.deltas(sn)
        for b, g in enumerate(mole.router.block_groups(sn)):
            # total-variation distance between the routing distributions, mean over the 4 layers
            dist.setdefault(g, []).append(float(0.5 * (p[b] - p0[b]).abs().sum(-1).mean()))
            mean_routing.setdefault(g, []).append(p[b].mean(0))  # (K,), mean over the 4 layers
            if group_experts:
                own.setdefault(g, []).append(float(p[b, :, g].mean()))
            dims = block_dims(mole.space, sn, b)
            for layer in LINEAR_LAYERS:
                w = weight(layer, params[f"blocks.{b}.{LINEAR_PATHS[layer]}.weight"], dims)
                ratio[layer].append(float(deltas[(b, layer)].norm() / w.norm()))
    return {
        "routing_tv_from_init": {str(g): statistics.fmean(v) for g, v in sorted(dist.items())},
        "routing_tv_from_init_mean": statistics.fmean(x for v in dist.values() for x in v),
        "own_expert_share": {str(g): statistics.fmean(v) for g, v in sorted(own.items())} if own else None,
        "dw_over_w": {layer: statistics.fmean(v) for layer, v in ratio.items()},
        "routing_mean": ({str(g): torch.stack(v).mean(0).tolist() for g, v in sorted(mean_routing.items())}
                         if group_experts else None),
        "expert_cosine": expert_cosine(mole),
    }


@torch.no_grad()
def expert_cosine(mole) -> dict[str, float] | None:
    """Per layer type, the mean pairwise cosine similarity between the full-size updates U_k D_k of the K experts
    (or parts) of a layer, averaged over the blocks: near 1 when the experts learned one shared direction. Experts
    that never trained (U = 0) are left out; None with fewer than two trained experts anywhere."""
    experts, r = mole.experts, mole.experts.rank
    out: dict[str, float] = {}
    for layer in LINEAR_LAYERS:
        values = []
        for b in range(len(experts.blocks)):
            u = experts.blocks[b][f"{layer}_U"]
            d = experts.down(b, layer)
            full = torch.stack([(u[:, k * r:(k + 1) * r] @ d[k * r:(k + 1) * r]).flatten()
                                for k in range(experts.num_experts)])
            full = full[full.norm(dim=1) > 0]
            if len(full) > 1:
                values.append(mean_off_diagonal(F.normalize(full, dim=1) @ F.normalize(full, dim=1).T))
        if values:
            out[layer] = statistics.fmean(values)
    return out or None


# ---------------------------------------------------------------------- stage: sweep (validation only)
SWEEP_GRID: list[dict[str, Any]] = [
    {"alpha": 1.0, "router_lr": 0.1, "warmup": 1},   # the paper's values (warm-up 10% of the budget)
    {"alpha": 4.0, "router_lr": 0.1, "warmup": 1},
    {"alpha": 16.0, "router_lr": 0.1, "warmup": 1},   # LoRA's usual alpha = 2r
    {"alpha": 16.0, "router_lr": 1.0, "warmup": 1},
    {"alpha": 16.0, "router_lr": 0.1, "warmup": 0},
    # the experts' LR (paper 5e-4) decides how far they move in a short budget: on the 10k-image wide regime the
    # five settings above changed the weights by <= 2.5% of ||W|| and the validation loss by < 0.001
    {"alpha": 16.0, "router_lr": 0.1, "warmup": 1, "expert_lr": 2e-3},
    {"alpha": 16.0, "router_lr": 0.1, "warmup": 1, "expert_lr": 5e-3},
    {"alpha": 16.0, "router_lr": 1.0, "warmup": 1, "expert_lr": 5e-3},
]


def _hp_key(hp: dict[str, Any]) -> str:
    key = f"a{hp['alpha']:g}-rlr{hp['router_lr']:g}-wu{hp['warmup']}"
    return key + (f"-lr{hp['expert_lr']:g}" if "expert_lr" in hp else "")


def stage_sweep(args, store: Store) -> dict[str, Any]:
    """TAS-LoRA seed 0 for each setting; judged by paired validation loss over the fixed subnets."""
    workdir = args.out / "workspace"
    val = val_batches(args, args.sweep_val)
    base = load_checkpoint(args.supernet)
    fixed = sample_distinct(base.supernet.space, args.random_subnets, seed=FIXED_SEED)
    base_loss = [per_image(base, sn, val)[1] for sn in fixed]
    for hp in SWEEP_GRID[: args.sweep_grid]:
        key = _hp_key(hp)
        if store.find("sweep", key):
            continue
        t0 = time.perf_counter()
        run = _train(args, workdir, "tas-lora", 0, f"sweep-{key}", hp)
        loaded = load_checkpoint(run)
        losses = [per_image(loaded, sn, val)[1] for sn in fixed]
        diff = np.mean([b - a for a, b in zip(losses, base_loss)], axis=0)  # > 0: experts lower the loss
        mean, lo, hi = bootstrap_ci(diff)
        moved = what_moved(loaded, 0, fixed)
        rec = store.add({"stage": "sweep", "key": key, "hp": hp, "run": str(run), "val_images": val.count,
                         "val_loss_gain": mean, "val_loss_gain_ci": [lo, hi],
                         "val_loss": float(np.mean(losses)), "routing_tv_from_init_mean": moved["routing_tv_from_init_mean"],
                         "dw_over_w": moved["dw_over_w"], "seconds": round(time.perf_counter() - t0, 1)})
        print(f"[sweep] {key}: val loss gain {mean:+.4f} [{lo:+.4f}, {hi:+.4f}], routing moved "
              f"{rec['routing_tv_from_init_mean']:.4f}", flush=True)
    rows = [r for r in store.records("sweep")]
    best = max(rows, key=lambda r: r["val_loss_gain"])
    print(f"[sweep] best on validation: {best['key']} (gain {best['val_loss_gain']:+.4f})", flush=True)
    return best["hp"]


def chosen_hp(args, store: Store) -> dict[str, Any]:
    """The sweep's choice when it ran, else the command-line values."""
    rows = store.records("sweep")
    if rows and not args.no_sweep_choice:
        return max(rows, key=lambda r: r["val_loss_gain"])["hp"]
    return {"alpha": args.alpha, "router_lr": args.router_lr, "warmup": args.warmup_epochs}


# ---------------------------------------------------------------------- stage: ablation cells
def stage_ablation(args, store: Store) -> None:
    workdir = args.out / "workspace"
    hp = chosen_hp(args, store)
    print(f"[ablation] MoLE settings: {hp} ({args.epochs} epochs per trained method)", flush=True)
    test, test_small = test_batches(args), test_batches(args, 1000)
    for seed in args.seeds:
        for method in args.methods:
            key = f"{method}-s{seed}"
            done = store.find("ablation", key)
            if done:
                if METHODS[method][0] == "mole" and done.get("hp") != hp:
                    raise SystemExit(f"ablation cell {key} in {store.log} was trained with {done.get('hp')}, but the "
                                     f"sweep now chooses {hp}; remove its line (and run folder) to re-train it")
                continue
            t0 = time.perf_counter()
            sweep_run = store.find("sweep", _hp_key(hp)) if (method, seed) == ("tas-lora", 0) else None
            if method == "supernet":
                ckpt = args.supernet
            elif sweep_run is not None:  # the sweep trained exactly this cell (TAS-LoRA, seed 0, chosen settings)
                ckpt = Path(sweep_run["run"])
            else:
                ckpt = _train(args, workdir, method, seed, f"abl-{key}", hp)
            best = _search(args, ckpt, seed, args.out / "searches" / f"{key}.json")
            loaded = load_checkpoint(ckpt)
            fixed = sample_distinct(loaded.supernet.space, args.random_subnets, seed=FIXED_SEED)
            s_correct, s_loss = per_image(loaded, best, test)
            r = [per_image(loaded, sn, test) for sn in fixed]
            targets = headroom_targets(args, loaded)  # the subnets whose headroom (f) measures: capture ratio
            h_correct = np.stack([per_image(loaded, sn, test)[0] for _, sn in targets])
            collapse = feature_collapse(loaded.supernet, fixed[:8], test_small.items, loaded.mole)
            cos = collapse.with_experts if collapse.with_experts is not None else collapse.without_experts
            rec = {"stage": "ablation", "key": key, "method": method, "seed": seed, "ckpt": str(ckpt),
                   "headroom_targets": [name for name, _ in targets],
                   "headroom_top1": [float(c.mean()) for c in h_correct],
                   "best": best.to_dict(), "hp": hp if METHODS[method][0] == "mole" else None,
                   "searched_top1": float(s_correct.mean()), "searched_loss": float(s_loss.mean()),
                   "random_top1_mean": float(np.mean([c.mean() for c, _ in r])),
                   "random_top1": [float(c.mean()) for c, _ in r],
                   "random_loss_mean": float(np.mean([lo.mean() for _, lo in r])),
                   "collapse_mean_cos": mean_off_diagonal(cos)}
            if loaded.mole is not None:
                rec["moved"] = what_moved(loaded, seed, fixed)
                without = per_image(loaded, best, test, use_experts=False)[0]
                rec["searched_top1_without_experts"] = float(without.mean())
            rec["seconds"] = round(time.perf_counter() - t0, 1)
            store.add(rec, {"searched_correct": s_correct, "searched_loss": s_loss.astype(np.float16),
                            "random_correct": np.stack([c for c, _ in r]),
                            "random_loss": np.mean([lo for _, lo in r], axis=0).astype(np.float16),  # mean over subnets
                            "headroom_correct": h_correct})
            print(f"[ablation] {key}: searched {rec['searched_top1']:.4f}, random mean {rec['random_top1_mean']:.4f}, "
                  f"collapse {rec['collapse_mean_cos']:.4f} ({rec['seconds']:.0f} s)", flush=True)


# ---------------------------------------------------------------------- stage: headroom
EXPERT_WEIGHTS = tuple(f".{path}.weight" for path in LINEAR_PATHS.values())  # what MoLE's experts change


def finetune_standalone(model: torch.nn.Module, args, seed: int = 0, scope: str = "all") -> torch.nn.Module:
    """A materialised subnet fine-tuned alone for the methods' budget (`args.epochs`), AdamW (`args.finetune_lr`) +
    cosine, no warm-up, on the supernet's training images (its split) with its data recipe (Fashion-MNIST: shift/
    flip and label smoothing 0.1; folders: AutoFormer's RandAugment, mixup/cutmix, smoothing). `scope` "all" trains
    every weight; "linear" only the qkv/proj/fc1/fc2 weights of the blocks, the only weights the experts change."""
    if scope == "linear":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("blocks.") and name.endswith(EXPERT_WEIGHTS))
    rd = run_data(args)
    bundle = build_data(rd.config, split=rd.split, train_subset=args.train_subset)
    loaders = make_loaders(bundle, rd.config, batch_size=args.batch_size, seed=seed, num_workers=args.workers)
    mixup, criterion = make_mixup(rd.config, bundle.num_classes), make_train_loss(rd.config)
    torch.manual_seed(seed)
    steps = args.epochs * len(loaders.train)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.finetune_lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=args.finetune_lr * 0.01)
    model.train()
    for epoch in range(args.epochs):
        loaders.train.set_epoch(epoch)
        for x, y in loaders.train:
            if mixup is not None:
                x, y = mixup(x, y)
            loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


HEADROOM_TARGETS = ("searched", "smallest", "random0", "random1")


def headroom_targets(args, base) -> list[tuple[str, Subnet]]:
    """The subnets whose headroom is measured: the supernet's searched subnet, the space's smallest and the first
    two fixed random subnets (the same subnets every ablation cell also evaluates, for the capture ratio)."""
    fixed = sample_distinct(base.supernet.space, args.random_subnets, seed=FIXED_SEED)
    searched = _search(args, args.supernet, 0, args.out / "searches" / "supernet-s0.json")
    return list(zip(HEADROOM_TARGETS, [searched, smallest_subnet(base.supernet.space), fixed[0], fixed[1]]))


def stage_headroom(args, store: Store, scope: str = "all", val: Batches | None = None) -> None:
    """Each target materialised and fine-tuned alone for the MoLE budget (all weights, or with `scope` "linear"
    only the four weights per block the experts change: stage "headroom_linear"); per-image test results, and
    with `val` also on those validation images (arrays val_correct_before/after: the screen's capture ratios)."""
    stage = "headroom" if scope == "all" else "headroom_linear"
    base = load_checkpoint(args.supernet)
    test = test_batches(args)
    for name, sn in headroom_targets(args, base):
        if store.find(stage, name):
            continue
        t0 = time.perf_counter()
        before = per_image(base, sn, test)
        model = finetune_standalone(materialize(base.supernet, sn), args, scope=scope)
        after = model_per_image(model, test)
        arrays = {"correct_before": before[0], "correct_after": after[0]}
        if val is not None:
            arrays.update({"val_correct_before": per_image(base, sn, val)[0], "val_correct_after": model_per_image(model, val)[0]})
        rec = store.add({"stage": stage, "key": name, "subnet": sn.to_dict(), "top1_before": float(before[0].mean()),
                         "top1_after": float(after[0].mean()), "loss_before": float(before[1].mean()),
                         "loss_after": float(after[1].mean()), "seconds": round(time.perf_counter() - t0, 1),
                         **({"val_images": val.count} if val is not None else {})}, arrays)
        print(f"[{stage}] {name}: top-1 {rec['top1_before']:.4f} -> {rec['top1_after']:.4f}", flush=True)


def stage_headroom_linear(args, store: Store) -> None:
    """How much of the headroom the experts' four weights per block can reach at all (the rest is in the patch
    embedding, positions, LayerNorms, biases and the classifier, which MoLE leaves frozen)."""
    stage_headroom(args, store, scope="linear")


def headroom_summary(store: Store, stage: str = "headroom") -> dict[str, Any] | None:
    """Headroom pooled over the measured subnets (paired per image) and per subnet, in points, with 95% CIs."""
    head = store.records(stage)
    if not head:
        return None
    diffs = {h["key"]: store.arrays(stage, h["key"])["correct_after"].astype(float)
             - store.arrays(stage, h["key"])["correct_before"] for h in head}
    pooled = bootstrap_ci(np.mean(list(diffs.values()), axis=0))
    subnets = []
    for h in head:
        m, lo, hi = bootstrap_ci(diffs[h["key"]])
        subnets.append({"name": h["key"], "subnet": h["subnet"], "top1_before": h["top1_before"] * 100,
                        "top1_after": h["top1_after"] * 100, "gain_points": m * 100, "ci": [lo * 100, hi * 100],
                        "seconds": h["seconds"]})
    return {"gain_points": pooled[0] * 100, "ci": [pooled[1] * 100, pooled[2] * 100], "subnets": subnets,
            "seconds": sum(h["seconds"] for h in head)}


# ---------------------------------------------------------------------- stage: report
def _fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _ci(diff: np.ndarray, scale: float = 100.0, digits: int = 2) -> str:
    m, lo, hi = bootstrap_ci(diff)
    return f"{m * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"


def paired(store: Store, method: str, seeds: list[int]) -> dict[str, np.ndarray] | None:
    """Per-image differences vs (a), averaged over the seeds both have: searched top-1, random-mean top-1 and loss."""
    pairs = [(store.arrays("ablation", f"{method}-s{s}"), store.arrays("ablation", f"supernet-s{s}")) for s in seeds
             if store.find("ablation", f"{method}-s{s}") and store.find("ablation", f"supernet-s{s}")]
    if not pairs:
        return None
    return {
        "searched": np.mean([m["searched_correct"].astype(float) - a["searched_correct"] for m, a in pairs], axis=0),
        "random": np.mean([m["random_correct"].mean(0) - a["random_correct"].mean(0) for m, a in pairs], axis=0),
        "random_loss": np.mean([_mean_loss(a) - _mean_loss(m) for m, a in pairs], axis=0),
    }


def _mean_loss(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Per-image loss averaged over the fixed random subnets (stored per subnet by older cells, as the mean now)."""
    loss = arrays["random_loss"].astype(float)
    return loss.mean(0) if loss.ndim == 2 else loss


def ratio_ci(num: np.ndarray, den: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """mean(num) / mean(den) and its 95% percentile-bootstrap interval, resampling images jointly (both are paired
    per-image differences on the same test images). Meaningful only when mean(den) is clearly above zero."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    for start in range(0, resamples, 100):  # 100 resamples at a time keeps memory at 100 x n
        idx = rng.integers(0, len(num), (min(100, resamples - start), len(num)))
        ratios[start:start + len(idx)] = num[idx].mean(1) / den[idx].mean(1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(num.mean() / den.mean()), float(lo), float(hi)


def capture(store: Store, seeds: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Per method and headroom subnet: the method's paired gain over (a) (mean over seeds) and the capture ratio
    gain / headroom(f) on the same subnet and test images."""
    head = {h["key"]: store.arrays("headroom", h["key"]) for h in store.records("headroom")}
    out: dict[str, list[dict[str, Any]]] = {}
    for method in METHODS:
        if method == "supernet":
            continue
        pairs = [(store.arrays("ablation", f"{method}-s{s}"), store.arrays("ablation", f"supernet-s{s}")) for s in seeds
                 if store.find("ablation", f"{method}-s{s}") and store.find("ablation", f"supernet-s{s}")]
        pairs = [(m, a) for m, a in pairs if "headroom_correct" in m and "headroom_correct" in a]
        if not pairs:
            continue
        targets = store.find("ablation", f"{method}-s{seeds[0]}").get("headroom_targets", list(HEADROOM_TARGETS))
        rows = []
        for i, name in enumerate(targets):
            gain = np.mean([m["headroom_correct"][i].astype(float) - a["headroom_correct"][i] for m, a in pairs], axis=0)
            g = bootstrap_ci(gain)
            row: dict[str, Any] = {"subnet": name, "gain_points": g[0] * 100, "gain_ci": [g[1] * 100, g[2] * 100],
                                   "seeds": len(pairs)}
            if name in head:
                room = head[name]["correct_after"].astype(float) - head[name]["correct_before"]
                hr = bootstrap_ci(room)
                row.update({"headroom_points": hr[0] * 100, "headroom_ci": [hr[1] * 100, hr[2] * 100],
                            "headroom_resolved": hr[1] > 0})
                if hr[1] > 0:  # a ratio over a headroom whose interval includes 0 is not a number to report
                    ratio = ratio_ci(gain, room)
                    row.update({"capture_ratio": ratio[0], "capture_ci": [ratio[1], ratio[2]]})
            rows.append(row)
        out[method] = rows
    return out


def capture_markdown(cap: dict[str, list[dict[str, Any]]]) -> str:
    """The capture table: one row per method, one column per headroom subnet."""
    if not cap:
        return ""
    names = [r["subnet"] for r in next(iter(cap.values()))]
    text = ("\n\nCapture ratio = the method's paired top-1 gain over (a) / the headroom (f) of the same subnet "
            "(95% bootstrap CIs, images resampled jointly; undefined where the headroom's CI includes 0):\n\n")
    text += "| method | " + " | ".join(f"{n}: gain (capture)" for n in names) + " |\n|---|" + "---|" * len(names) + "\n"
    first = next(iter(cap.values()))
    text += "| (f) headroom | " + " | ".join(
        f"{r['headroom_points']:+.2f} [{r['headroom_ci'][0]:+.2f}, {r['headroom_ci'][1]:+.2f}]" if "headroom_points" in r
        else "–" for r in first) + " |\n"
    for method, rows in cap.items():
        cells = []
        for r in rows:
            cell = f"{r['gain_points']:+.2f} [{r['gain_ci'][0]:+.2f}, {r['gain_ci'][1]:+.2f}]"
            if r.get("headroom_resolved"):
                cell += f" ({r['capture_ratio']:.2f} [{r['capture_ci'][0]:.2f}, {r['capture_ci'][1]:.2f}])"
            cells.append(cell)
        text += f"| {LABELS[method]} | " + " | ".join(cells) + " |\n"
    return text


def per_subnet_gains(store: Store, method: str, seeds: list[int], space) -> dict[str, Any] | None:
    """Which fixed random subnets the method helps and hurts: per subnet its FLOPs and its paired top-1 gain over
    (a) (mean over seeds, 95% CI), the count helped/hurt beyond the interval, and Spearman(FLOPs, gain)."""
    pairs = [(store.arrays("ablation", f"{method}-s{s}"), store.arrays("ablation", f"supernet-s{s}")) for s in seeds
             if store.find("ablation", f"{method}-s{s}") and store.find("ablation", f"supernet-s{s}")]
    if not pairs:
        return None
    count = pairs[0][0]["random_correct"].shape[0]
    subnets = sample_distinct(space, count, seed=FIXED_SEED)
    rows = []
    for i, sn in enumerate(subnets):
        m, lo, hi = bootstrap_ci(np.mean([b["random_correct"][i].astype(float) - a["random_correct"][i]
                                          for b, a in pairs], axis=0))
        rows.append({"subnet": sn.to_dict(), "flops": flops(space, sn), "gain_points": m * 100,
                     "ci": [lo * 100, hi * 100]})
    gains = np.array([r["gain_points"] for r in rows])
    order = lambda v: np.argsort(np.argsort(v))  # noqa: E731  (ranks; ties are rare for FLOPs and gains)
    rho = float(np.corrcoef(order(np.array([r["flops"] for r in rows])), order(gains))[0, 1])
    return {"subnets": rows, "helped": sum(r["ci"][0] > 0 for r in rows), "hurt": sum(r["ci"][1] < 0 for r in rows),
            "spearman_flops_gain": rho}


def routing_separation(cells: list[dict[str, Any]], space) -> dict[str, Any] | None:
    """Does the learned routing separate groups by embed dim (the axis along which headroom differs)? For each embed
    dim: the routing mass its groups put on the experts that group-wise init gave to groups of the same embed dim
    (1/3 = no separation with 3 embed dims), and the mean total-variation distance between groups' routings
    within and across embed dims. From `what_moved`'s mean routing per group, averaged over seeds."""
    cells = [c for c in cells if c.get("moved", {}).get("routing_mean")]
    if not cells:
        return None
    groups = space.groups()
    by_group: dict[int, np.ndarray] = {}
    for g in range(len(groups)):
        vecs = [np.array(c["moved"]["routing_mean"][str(g)]) for c in cells if str(g) in c["moved"]["routing_mean"]]
        if vecs and len(vecs[0]) == len(groups):
            by_group[g] = np.mean(vecs, axis=0)
    if not by_group:
        return None
    out: dict[str, Any] = {"own_embed_mass": {}}
    for e in space.embed_dims:
        mine = [g for g in by_group if groups[g].embed_dim == e]
        experts = [k for k, grp in enumerate(groups) if grp.embed_dim == e]
        out["own_embed_mass"][str(e)] = float(np.mean([by_group[g][experts].sum() for g in mine])) if mine else None
    tv = lambda a, b: 0.5 * float(np.abs(a - b).sum())  # noqa: E731
    keys = sorted(by_group)
    same = [tv(by_group[a], by_group[b]) for a in keys for b in keys
            if a < b and groups[a].embed_dim == groups[b].embed_dim]
    diff = [tv(by_group[a], by_group[b]) for a in keys for b in keys
            if a < b and groups[a].embed_dim != groups[b].embed_dim]
    out["tv_within_embed"] = statistics.fmean(same) if same else None
    out["tv_across_embed"] = statistics.fmean(diff) if diff else None
    out["chance_own_embed_mass"] = 1 / len(space.embed_dims)
    return out


def diagnostics_markdown(diag: dict[str, Any]) -> str:
    """Which subnets each MoLE method helps/hurts, and how its routing separates embed dims."""
    text = "\n\nWhere the experts help and hurt (fixed random subnets; paired top-1 gain over (a), mean over seeds) and " \
           "whether the routing separates embed dims (mass on the experts group-wise init gave to the same embed dim; " \
           "chance = 1/number of embed dims):\n\n| method | helped (CI > 0) | hurt (CI < 0) | Spearman(FLOPs, gain) | " \
           "gain of the 5 smallest / 5 largest (mean) | own-embed routing mass per embed dim | routing TV within / " \
           "across embed dims |\n|---|---|---|---|---|---|---|\n"
    for method, d in diag.items():
        ps, sep = d.get("per_subnet"), d.get("routing")
        if ps is None:
            continue
        rows = sorted(ps["subnets"], key=lambda r: r["flops"])
        small = statistics.fmean(r["gain_points"] for r in rows[:5])
        large = statistics.fmean(r["gain_points"] for r in rows[-5:])
        mass = ", ".join(f"{e}: {m:.2f}" for e, m in sep["own_embed_mass"].items() if m is not None) if sep else "–"
        tvs = (f"{sep['tv_within_embed']:.3f} / {sep['tv_across_embed']:.3f}" if sep and sep["tv_within_embed"]
               is not None and sep["tv_across_embed"] is not None else "–")
        text += (f"| {LABELS[method]} | {ps['helped']}/{len(rows)} | {ps['hurt']}/{len(rows)} | "
                 f"{ps['spearman_flops_gain']:+.2f} | {small:+.2f} / {large:+.2f} | {mass} | {tvs} |\n")
    return text


def run_cost(store: Store, supernet: Path) -> dict[str, float | None]:
    """CPU seconds: supernet training (its summary.json), the headroom fine-tunes, the gate cells (a) and (b) s0."""
    summary = supernet / "summary.json"
    sup = json.loads(summary.read_text()).get("train_seconds") if summary.exists() else None
    head = sum(h["seconds"] for h in store.records("headroom")) or None
    gate = [store.find("ablation", k) for k in ("supernet-s0", "finetune-s0")]
    return {"supernet": sup, "headroom": head, "gate": sum(g["seconds"] for g in gate) if all(gate) else None}


def stage_report(args, store: Store) -> str:
    rows = store.records("ablation")
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"| method | searched subnet top-1 (%) | Δ vs (a), paired 95% CI | {args.random_subnets} random subnets, mean top-1 (%) | "
             "Δ vs (a), paired 95% CI | test-loss decrease vs (a), random subnets | collapse: mean cos | seeds | paper, ImageNet Tiny (%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary: dict[str, Any] = {"methods": {}}
    for method in METHODS:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        d = paired(store, method, seeds) if method != "supernet" else None
        cells = [_fmt([r["searched_top1"] for r in rs]), _ci(d["searched"]) if d else "–",
                 _fmt([r["random_top1_mean"] for r in rs]), _ci(d["random"]) if d else "–",
                 _ci(d["random_loss"], 1.0, 4) if d else "–", _fmt([r["collapse_mean_cos"] for r in rs], 1.0, 4)]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {len(rs)} | {PAPER[method]} |")
        summary["methods"][method] = {
            "searched_top1": [r["searched_top1"] for r in rs], "random_top1_mean": [r["random_top1_mean"] for r in rs],
            "collapse": [r["collapse_mean_cos"] for r in rs],
            **({k: bootstrap_ci(v) for k, v in d.items()} if d else {})}
    head = store.records("headroom")
    if head:
        before = [h["top1_before"] for h in head]
        after = [h["top1_after"] for h in head]
        diffs = np.mean([store.arrays("headroom", h["key"])["correct_after"].astype(float)
                         - store.arrays("headroom", h["key"])["correct_before"] for h in head], axis=0)
        lines.append(f"| {LABELS['headroom']} ({len(head)} subnets: {', '.join(h['key'] for h in head)}) | "
                     f"{statistics.fmean(before) * 100:.2f} → {statistics.fmean(after) * 100:.2f} | {_ci(diffs)} | | | | | 1 | – |")
        summary["headroom"] = head
        summary["headroom_summary"] = headroom_summary(store)
    linear = headroom_summary(store, "headroom_linear")
    if linear:
        per = ", ".join(f"{h['name']} {h['gain_points']:+.2f}" for h in linear["subnets"])
        lines.append(f"| (f') headroom through the experts' 4 weights per block only ({per}) | | "
                     f"{linear['gain_points']:+.2f} [{linear['ci'][0]:+.2f}, {linear['ci'][1]:+.2f}] | | | | | 1 | – |")
        summary["headroom_linear_summary"] = linear
    text = "\n".join(lines)
    cap = capture(store, seeds)
    if cap:
        summary["capture"] = cap
        text += capture_markdown(cap)
    space = load_checkpoint(args.supernet).supernet.space
    diag = {m: {"per_subnet": per_subnet_gains(store, m, seeds, space),
                "routing": routing_separation([r for r in rows if r["method"] == m], space)}
            for m in METHODS if METHODS[m][0] == "mole" and any(r["method"] == m for r in rows)}
    if diag:
        summary["diagnostics"] = diag
        text += diagnostics_markdown(diag)
    moved = [r for r in rows if "moved" in r]
    if moved:
        text += "\n\n| method | routing moved from init (TV, mean) | own-expert share (mean over groups) | " + \
                " | ".join(f"‖ΔW‖/‖W‖ {layer}" for layer in LINEAR_LAYERS) + " | searched top-1 without its experts (%) | " \
                "expert cosine (mean over layers) |\n"
        text += "|---|---|---|" + "---|" * len(LINEAR_LAYERS) + "---|---|\n"
        for method in METHODS:
            rs = [r for r in moved if r["method"] == method]
            if not rs:
                continue
            tv = [r["moved"]["routing_tv_from_init_mean"] for r in rs]
            own = [statistics.fmean(r["moved"]["own_expert_share"].values()) for r in rs if r["moved"]["own_expert_share"]]
            dw = [" " + _fmt([r["moved"]["dw_over_w"][layer] for r in rs], 100.0, 2) + "%" for layer in LINEAR_LAYERS]
            cos = [statistics.fmean(r["moved"]["expert_cosine"].values()) for r in rs if r["moved"].get("expert_cosine")]
            text += (f"| {LABELS[method]} | {_fmt(tv, 1.0, 4)} | {_fmt(own, 1.0, 3) if own else '–'} |" + " |".join(dw)
                     + f" | {_fmt([r['searched_top1_without_experts'] for r in rs])} | {_fmt(cos, 1.0, 3) if cos else '–'} |\n")
    ft = paired(store, "finetune", seeds)
    if ft is not None:
        m, lo, hi = bootstrap_ci(ft["random"])
        gate = "converged (gate met)" if m * 100 <= 0.1 else "NOT converged by this gate"
        text += (f"\nConvergence gate: full fine-tuning for the budget changes the mean top-1 of the {args.random_subnets} "
                 f"fixed subnets by {m * 100:+.2f} points [{lo * 100:+.2f}, {hi * 100:+.2f}] (gate: <= +0.1): {gate}.\n")
        summary["convergence_gate"] = {"finetune_gain_points": m * 100, "ci": [lo * 100, hi * 100]}
    sweep = store.records("sweep")
    if sweep:
        text += "\nSweep (TAS-LoRA, seed 0, validation split only; gain = mean val-loss decrease vs the supernet alone over the fixed subnets):\n\n"
        text += ("| alpha | router LR | warm-up epochs | expert LR | val loss gain [95% CI] | routing moved (TV) | "
                 "‖ΔW‖/‖W‖ fc1 |\n|---|---|---|---|---|---|---|\n")
        for r in sweep:
            hp = r["hp"]
            text += (f"| {hp['alpha']:g} | {hp['router_lr']:g} | {hp['warmup']} | {hp.get('expert_lr', args.expert_lr):g} | "
                     f"{r['val_loss_gain']:+.4f} "
                     f"[{r['val_loss_gain_ci'][0]:+.4f}, {r['val_loss_gain_ci'][1]:+.4f}] | "
                     f"{r['routing_tv_from_init_mean']:.4f} | {r['dw_over_w']['fc1'] * 100:.2f}% |\n")
        summary["sweep"] = sweep
    summary["cost"] = run_cost(store, args.supernet)
    (args.out / "report.md").write_text(text + "\n")
    (args.out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    return text


# ---------------------------------------------------------------------- stage: ship the evidence
def _copy_run(src: Path, dst: Path, keep: tuple[str, ...]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in keep:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)  # new file: the umask's permissions, not the source's


def ship(store: Store, supernet: Path, dest: Path, cell: str, mole_name: str, data: str) -> Path:
    """<dest>/{supernet,<mole_name>}/ + subnet.json + manifest.json (relative paths) from the ablation cell `cell`:
    its MoLE run, the subnet its search found and the test top-1 it measured with and without the experts."""
    rec = store.find("ablation", cell)
    if rec is None:
        raise SystemExit(f"no finished ablation cell {cell} to ship; run the stage that trains it first")
    sup, mole = dest / "supernet", dest / mole_name
    _copy_run(supernet, sup, ("supernet.safetensors", "space.json", "split.json", "train_config.json",
                              "summary.json", "metrics.jsonl"))
    plot_training_curves({"supernet": training_curve_points(supernet)}, sup / "training_curves.png",
                         keys=("train loss", "val loss (largest)", "val loss (smallest)", "val top-1 (largest)"))
    _copy_run(Path(rec["ckpt"]), mole, ("mole.safetensors", "mole.json", "split.json", "train_config.json", "summary.json"))
    meta = json.loads((mole / "mole.json").read_text())
    meta["supernet_dir"] = "../supernet"  # relative: the shipped folder loads wherever it is checked out
    (mole / "mole.json").write_text(json.dumps(meta, indent=2) + "\n")
    (dest / "subnet.json").write_text(json.dumps(Subnet.from_dict(rec["best"]).to_dict(), indent=2) + "\n")
    root = Path(__file__).resolve().parents[1]
    shown = dest.resolve().relative_to(root) if dest.resolve().is_relative_to(root) else dest
    manifest = {"supernet_run": "supernet", "mole_run": mole_name, "subnet": "subnet.json",
                "top1_with_experts": round(rec["searched_top1"] * 100, 2),
                "top1_without_experts": round(rec["searched_top1_without_experts"] * 100, 2),
                "split": "test", "data": data,
                "check": f"taslora eval --ckpt {shown}/{mole_name} --subnet {shown}/subnet.json --split test [--no-experts]"}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))
    return dest


def stage_ship(args, store: Store) -> Path:
    """benchmarks/reproduction/{supernet,tas-lora-s0}/ + subnet.json + manifest.json (relative paths)."""
    return ship(store, args.supernet, args.ship_dir, "tas-lora-s0", "tas-lora-s0", "fmnist")


# ---------------------------------------------------------------------- entry point
STAGES = {"sweep": stage_sweep, "headroom": stage_headroom, "headroom-linear": stage_headroom_linear,
          "ablation": stage_ablation, "report": stage_report, "ship": stage_ship}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The reproduction's options (every stage takes them all)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["supernet", *STAGES, "all"])
    parser.add_argument("--supernet", type=Path, help="Converged supernet run folder (default: the one the "
                        "`supernet` stage trained in <out>/workspace, or the one recorded in <out>/args.json).")
    parser.add_argument("--space", default="fmnist", help="Search space of the `supernet` stage: a preset "
                        "(fmnist, fmnist-wide) or a YAML file.")
    parser.add_argument("--supernet-epochs", type=int, default=60, help="Epochs of the `supernet` stage.")
    parser.add_argument("--epochs", type=int, help="Budget of every trained method (default: 10%% of the supernet's epochs).")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--expert-lr", type=float, default=5e-4, help="Experts' AdamW LR (paper 5e-4).")
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="Full / standalone fine-tuning LR (AdamW).")
    parser.add_argument("--alpha", type=float, default=1.0, help="LoRA alpha when no sweep ran (paper: 1).")
    parser.add_argument("--router-lr", type=float, default=0.1, help="Router SGD LR when no sweep ran (paper 0.1).")
    parser.add_argument("--warmup-epochs", type=int, default=None, help="Warm-up when no sweep ran (default: 10%% of the budget).")
    parser.add_argument("--no-sweep-choice", action="store_true", help="Use the command-line MoLE settings even if a sweep ran.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=PAPER_METHODS, choices=list(METHODS),
                        help="Methods of the ablation stage (default: the paper's five; the tas-lora-* diagnostics on request).")
    parser.add_argument("--flops", default="6M")
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--val-subset", type=int, default=2000, help="Validation images of the search fitness.")
    parser.add_argument("--sweep-val", type=int, default=5000, help="Validation images judging the sweep.")
    parser.add_argument("--random-subnets", type=int, default=20)
    parser.add_argument("--train-subset", type=int, default=None,
                        help="Train on the first N images of the split only (the `supernet` stage records it in the "
                             "split, so every later stage uses the same N images).")
    parser.add_argument("--sweep-grid", type=int, default=None, help="Only the first N sweep settings (smoke runs).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/reproduction-runs"))
    parser.add_argument("--ship-dir", type=Path, default=Path("benchmarks/reproduction"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--data", default=None, help="Data of the methods and evaluations (default: what the supernet "
                        "run recorded); required for an imported AutoFormer supernet, e.g. an ImageNet-style folder.")
    parser.add_argument("--workers", type=int, default=0, help="Data-loader workers for folder data.")
    return parser.parse_args(argv)


def resolve_supernet(args: argparse.Namespace) -> Path:
    """--supernet, else the one recorded in <out>/args.json, else the `supernet` stage's finished run."""
    state = args.out / "args.json"
    if args.supernet is None and state.exists():
        args.supernet = Path(json.loads(state.read_text())["supernet"])
    if args.supernet is None:
        run, finished = find_supernet(args.out / "workspace")
        args.supernet = run if finished else None
    if args.supernet is None:
        raise SystemExit("--supernet is required (a converged supernet run folder), or run the `supernet` stage first")
    args.supernet = args.supernet.resolve()
    state.write_text(json.dumps({"supernet": str(args.supernet)}) + "\n")
    return args.supernet


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    store = Store(args.out)
    started = time.perf_counter()
    if args.stage == "supernet":
        args.supernet = stage_supernet(args, store)
        resolve_supernet(args)
        print(f"[reproduction] supernet {args.supernet} done in {time.perf_counter() - started:.0f} s", flush=True)
        return 0
    resolve_supernet(args)
    if args.epochs is None:
        args.epochs = max(1, round(recorded_epochs(args.supernet) / 10))
    if args.warmup_epochs is None:
        args.warmup_epochs = max(0, round(args.epochs / 10))
    stages = ["sweep", "headroom", "ablation", "report"] if args.stage == "all" else [args.stage]
    for stage in stages:
        STAGES[stage](args, store)
    print(f"[reproduction] {', '.join(stages)} done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
