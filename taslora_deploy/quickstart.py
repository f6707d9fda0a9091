"""The `quickstart` verb: the whole toolchain on the embedded default (Fashion-MNIST) in one call.

It chains the library verbs behind the commands a user types (train_supernet -> train_mole -> run_search ->
specialize -> export -> bench) through one workspace, then evaluates the searched subnet on the test set three
ways: the supernet alone, with its routed experts (MoLE) and specialised (what the export folds), each gain paired
on the same images with a bootstrap 95% interval; draws the plots and writes <workdir>/quickstart-summary.json.
`taslora quickstart` only parses options and prints the summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taslora_core.analysis import paired_bootstrap
from taslora_core.atomic import atomic_write_json
from taslora_core.run_io import is_supernet_dir
from taslora_core.search import Constraints, SearchConfig, SearchEvents, SearchRunConfig, run_search
from taslora_core.specialize import SpecializeConfig, specialize
from taslora_core.subnet import Subnet
from taslora_core.train import MoLETrainConfig, SupernetTrainConfig, train_mole, train_supernet
from taslora_core.train.run_files import recorded_epochs
from taslora_deploy.artifacts import MODEL_CONFIG, MODEL_ONNX
from taslora_deploy.bench.verb import bench
from taslora_deploy.pipeline import ExportOptions, export
from taslora_deploy.trt_engine import tensorrt_status

SUMMARY_FILE = "quickstart-summary.json"


@dataclass(frozen=True)
class QuickstartPlan:
    """Budgets of the quickstart's steps."""

    supernet_epochs: int
    supernet_warmup: int
    supernet_lr: float  # base LR per 512 images (AutoFormer scales 5e-4 so); higher for short CPU runs
    mole_share: float  # MoLE epochs = this share of the supernet's epochs (the paper: 50 of 500), at least 1
    mole_warmup_share: float  # router frozen for this share of the MoLE epochs (the paper: 5 of 50), rounded
    recipe: str  # `taslora train --recipe`: the quickstart's time budget fits one pass per step (paper)
    expert_lr: float
    lora_alpha: float
    router_lr: float
    train_subset: int | None
    val_subset: int | None  # held-out images of the training runs' epoch-end and summary evaluations (None: all)
    summary_subnets: int  # random subnets in the training runs' summary.json besides the largest and smallest
    search_population: int
    search_iterations: int
    search_val_subset: int
    latency_iters: int
    bench_min_time_s: float
    specialize_steps: int  # `taslora specialize` budget of the searched subnet (0: skip the step)
    specialize_eval_every: int


# MoLE settings: chosen on the held-out validation split by benchmarks/reproduction.py's sweep (README).
FULL = QuickstartPlan(supernet_epochs=6, supernet_warmup=1, supernet_lr=4e-3, mole_share=0.1, mole_warmup_share=0.1,
                      recipe="paper", expert_lr=5e-4, lora_alpha=16.0, router_lr=1.0, train_subset=None, val_subset=None, summary_subnets=3,
                      search_population=20, search_iterations=6, search_val_subset=2000, latency_iters=300,
                      bench_min_time_s=1.0, specialize_steps=936, specialize_eval_every=50)
FAST = QuickstartPlan(supernet_epochs=1, supernet_warmup=0, supernet_lr=4e-3, mole_share=0.1, mole_warmup_share=0.0,
                      recipe="paper", expert_lr=2e-3, lora_alpha=16.0, router_lr=1.0, train_subset=3000, val_subset=1000, summary_subnets=0,
                      search_population=6, search_iterations=2, search_val_subset=500, latency_iters=60,
                      bench_min_time_s=0.2, specialize_steps=20, specialize_eval_every=10)


def _test_three_ways(mole_dir: Path, subnet, specialized_dir: Path | None) -> dict[str, Any]:
    """The searched subnet on the test set: supernet alone, with its routed experts, and specialised (the deltas the
    export folds), every gain paired on the same images."""
    from taslora_core.data import DataConfig, load_test_batches
    from taslora_core.evaluate import per_image
    from taslora_core.run_io import load_checkpoint
    from taslora_core.specialize import read_specialized

    loaded = load_checkpoint(mole_dir)
    batches = load_test_batches(DataConfig(**loaded.data))
    ok_e, loss_e = per_image(loaded.supernet, subnet, batches, loaded.mole, use_experts=True)
    ok_s, loss_s = per_image(loaded.supernet, subnet, batches, loaded.mole, use_experts=False)
    out = {"top1_mole": float(ok_e.double().mean()), "loss_mole": float(loss_e.mean()),
           "top1_supernet": float(ok_s.double().mean()), "loss_supernet": float(loss_s.mean()),
           "test_images": int(ok_e.numel()), "top1_gain": paired_bootstrap(ok_e.double() - ok_s.double()).to_dict(),
           "loss_change": paired_bootstrap(loss_e.double() - loss_s.double()).to_dict()}
    if specialized_dir is not None:
        source = read_specialized(specialized_dir).delta_source()
        ok_x, loss_x = per_image(loaded.supernet, subnet, batches, source)
        out.update({"top1_specialized": float(ok_x.double().mean()), "loss_specialized": float(loss_x.mean()),
                    "top1_gain_specialized": paired_bootstrap(ok_x.double() - ok_s.double()).to_dict(),
                    "top1_gain_specialized_over_mole": paired_bootstrap(ok_x.double() - ok_e.double()).to_dict()})
    return out


def _plots(workdir: Path, supernet_dir: Path, mole_dir: Path, export_dir: Path, log: Callable[[str], None]) -> dict[str, str]:
    from taslora_core.plots import plot_routing_heatmap, plot_training_curves, training_curve_points
    from taslora_core.slicing import LINEAR_LAYERS

    out: dict[str, str] = {}
    runs = {"supernet": training_curve_points(supernet_dir), "MoLE": training_curve_points(mole_dir)}
    try:
        out["training_curves"] = str(plot_training_curves(
            runs, workdir / "training_curves.png",
            keys=("train loss", "val loss (largest)", "val top-1 (largest)", "val loss (smallest)")))
    except ValueError as err:
        log(f"note: no training curves ({err})")
    config = json.loads((export_dir / MODEL_CONFIG).read_text())
    if config.get("routing"):
        path = plot_routing_heatmap(config["routing"], [f"block {b}" for b in range(len(config["routing"]))],
                                    list(LINEAR_LAYERS), export_dir / "routing.png",
                                    title="routing weights of the exported subnet (blocks x layers x experts)")
        out["routing_heatmap"] = str(path)
    return out


def quickstart(
    fast: bool = False,
    supernet: str | Path | None = None,
    flops_budget: str = "6M",
    workdir: str | Path = "taslora-runs",
    seed: int = 0,
    log: Callable[[str], None] = print,
    stage: Callable[[str, str], None] | None = None,
    search_events: SearchEvents | None = None,
) -> dict[str, Any]:
    """Run every stage into `workdir` and return the summary (also written to quickstart-summary.json).

    `supernet`: a trained supernet run folder to start from (else one is trained). `stage(name, what)` is called
    as each stage starts (the CLI draws a rule); `search_events` shows the search's progress.
    """
    workdir = Path(workdir)
    announce = stage or (lambda name, what: log(f"== {name}: {what}"))
    plan = FAST if fast else FULL
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str, what: str) -> None:
        announce(name, what)
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = round(time.perf_counter() - timings[name], 1)

    common = dict(workdir=str(workdir), seed=seed, train_subset=plan.train_subset, val_subset=plan.val_subset,
                  summary_subnets=plan.summary_subnets, quiet=fast)
    if supernet is not None:
        supernet_dir = Path(supernet).resolve()
        if not is_supernet_dir(supernet_dir):
            raise ValueError(f"--supernet {supernet} is not a taslora supernet run folder (no supernet.safetensors/space.json); "
                             "pass a folder written by `taslora supernet train` or `taslora supernet import`")
        announce("supernet", f"{supernet_dir} (given, not trained)")
    workdir.mkdir(parents=True, exist_ok=True)
    if supernet is None:
        step("supernet", f"train the fmnist supernet, {plan.supernet_epochs} epochs")
        supernet_dir = train_supernet(SupernetTrainConfig(
            space="fmnist", data="fmnist", epochs=plan.supernet_epochs, warmup_epochs=plan.supernet_warmup,
            lr=plan.supernet_lr, **common), log=log).run_dir
        done("supernet")
    mole_epochs = max(1, round(plan.mole_share * recorded_epochs(supernet_dir, plan.supernet_epochs)))
    step("mole", f"train MoLE experts + router, {mole_epochs} epochs")
    mole_dir = train_mole(MoLETrainConfig(
        supernet=str(supernet_dir), epochs=mole_epochs, warmup_epochs=round(plan.mole_warmup_share * mole_epochs), recipe=plan.recipe, expert_lr=plan.expert_lr,
        lora_alpha=plan.lora_alpha, router_lr=plan.router_lr, **common), log=log).run_dir
    done("mole")
    step("search", f"evolutionary search, FLOPs <= {flops_budget}")
    searched = run_search(SearchRunConfig(
        budget=Constraints.from_amounts(flops_budget),
        search=SearchConfig(population=plan.search_population, iterations=plan.search_iterations,
                            val_subset=plan.search_val_subset, seed=seed),
        ckpt=mole_dir, workdir=workdir), events=search_events)
    done("search")
    best = searched.best
    best_subnet = Subnet.from_dict(best["subnet"])
    specialized = None
    if plan.specialize_steps > 0:
        step("specialize", f"fine-tune the searched subnet alone from its routed mixture, {plan.specialize_steps} steps")
        specialized = specialize(SpecializeConfig(
            workdir=str(workdir), seed=seed, subnet=str(searched.best_path), ckpt=str(mole_dir),
            steps=plan.specialize_steps, eval_every=plan.specialize_eval_every, val_subset=plan.val_subset or 2000,
            quiet=fast), log=log)
        done("specialize")
    trt_ok, trt_reason = tensorrt_status()
    step("export", "fold" + (" the specialised subnet" if specialized else "") + ", check, write model.safetensors / "
         "model.onnx" + (" / model.plan" if trt_ok else ""))
    exported = export(searched.best_path, mole_dir, workdir=workdir, log=log,
                      specialized=specialized.run_dir if specialized else None, options=ExportOptions(
                          onnx=True, trt=trt_ok, latency_mode="report", latency_iters=plan.latency_iters, seed=seed,
                          specialize=specialized is not None))
    done("export")
    if not exported.ok:
        raise ValueError(f"export failed: {'; '.join(f'{k}: {v}' for k, v in exported.failures.items())}")
    export_dir = exported.out
    step("bench", "onnxruntime CPU")
    bench_rows = bench(export_dir / MODEL_ONNX, batch_sizes=(1, 32), min_time_s=plan.bench_min_time_s,
                       warmup_s=0.2, min_iters=20, name=MODEL_ONNX)
    done("bench")
    announce("evaluate", "searched subnet on the test set: supernet alone, MoLE, specialised")
    test = _test_three_ways(mole_dir, best_subnet, specialized.run_dir if specialized else None)
    plots = _plots(workdir, supernet_dir, mole_dir, export_dir, log)
    if searched.run_dir is not None and (searched.run_dir / "fitness_vs_flops.png").exists():
        plots["fitness_vs_flops"] = str(searched.run_dir / "fitness_vs_flops.png")

    report = exported.report
    latency = report.get("zero_overhead_latency", {})
    summary = {
        "top1_with_mole": test["top1_mole"], "top1_supernet_only": test["top1_supernet"],
        "test_loss_with_mole": test["loss_mole"], "test_loss_supernet_only": test["loss_supernet"],
        "top1_gain_with_mole": test["top1_gain"], "test_loss_change_with_mole": test["loss_change"],
        "top1_specialized": test.get("top1_specialized"), "top1_gain_specialized": test.get("top1_gain_specialized"),
        "top1_gain_specialized_over_mole": test.get("top1_gain_specialized_over_mole"),
        "specialize": None if specialized is None else {
            "run": str(specialized.run_dir), "steps_run": specialized.record.get("steps_run"),
            "weights": specialized.record.get("weights"), "seconds": timings.get("specialize")},
        "mole_seconds": timings.get("mole"),
        "test_images": test["test_images"], "flops_budget": flops_budget, "flops_autoformer": best["flops_autoformer"],
        "params": best["params"], "subnet": best_subnet.to_dict(),
        "fold_parity_max_abs": exported.fold_parity_max_diff,
        "onnx_parity_max_abs": report.get("onnx", {}).get("parity", {}).get("max_abs_diff"),
        "latency_ratio_folded_vs_baseline": latency.get("ratio_median"),
        "latency_ratio_p10_p90": [latency.get("ratio_p10"), latency.get("ratio_p90")],
        "latency_within_3pct": latency.get("within_tolerance"),
        "same_structure_as_no_lora": report.get("zero_overhead_structure", {}).get("equal"),
        "unmerged_over_folded_latency": report.get("unmerged_vs_folded", {}).get("ratio_median"),
        "onnx_bench": [{"batch": r["batch"], "p50_ms": r["p50_ms"], "throughput_ips": r["throughput_ips"]} for r in bench_rows],
        "tensorrt": "built" if trt_ok else f"skipped: {trt_reason}",
        "supernet_given": supernet is not None,
        "files": {"supernet": str(supernet_dir), "mole": str(mole_dir), "search": str(searched.run_dir),
                  **({"specialize": str(specialized.run_dir)} if specialized else {}), "export": str(export_dir), "onnx": str(export_dir / MODEL_ONNX), **plots},
        "timings_s": timings, "total_s": round(time.perf_counter() - started, 1), "fast": fast,
    }
    atomic_write_json(workdir / SUMMARY_FILE, summary)
    return summary
