"""`taslora quickstart`: the whole toolchain on the embedded default (Fashion-MNIST) in one command.

It chains the library verbs behind the commands a user types (train_supernet -> train_mole -> run_search ->
export -> bench) through one workspace, then evaluates the searched subnet on the test set with and without
its experts (paired, with a bootstrap 95% interval), draws the plots and ends with one summary table (also
written to <workdir>/quickstart-summary.json).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from taslora_cli.app import DEFAULT_WORKDIR_PATH, WorkdirOpt, app, console, handle_errors


@dataclass(frozen=True)
class QuickstartPlan:
    """Budgets of the quickstart's steps."""

    supernet_epochs: int
    supernet_warmup: int
    supernet_lr: float  # base LR per 512 images (AutoFormer scales 5e-4 so); higher for short CPU runs
    mole_share: float  # MoLE epochs = this share of the supernet's epochs (the paper: 50 of 500), at least 1
    mole_warmup_share: float  # router frozen for this share of the MoLE epochs (the paper: 5 of 50), rounded
    expert_lr: float
    lora_alpha: float
    router_lr: float
    train_subset: int | None
    search_population: int
    search_iterations: int
    search_val_subset: int
    latency_iters: int
    bench_min_time_s: float


# MoLE settings: chosen on the held-out validation split by benchmarks/reproduction.py's sweep (README).
FULL = QuickstartPlan(supernet_epochs=6, supernet_warmup=1, supernet_lr=4e-3, mole_share=0.1, mole_warmup_share=0.1,
                      expert_lr=5e-4, lora_alpha=16.0, router_lr=1.0, train_subset=None,
                      search_population=20, search_iterations=6, search_val_subset=2000, latency_iters=300,
                      bench_min_time_s=1.0)
FAST = QuickstartPlan(supernet_epochs=1, supernet_warmup=0, supernet_lr=4e-3, mole_share=0.1, mole_warmup_share=0.0,
                      expert_lr=2e-3, lora_alpha=16.0, router_lr=1.0, train_subset=3000,
                      search_population=6, search_iterations=2, search_val_subset=500, latency_iters=60,
                      bench_min_time_s=0.2)


def _supernet_epochs(supernet_dir: Path, default: int) -> int:
    """Epochs the supernet run recorded in train_config.json (imported supernets record none: `default`)."""
    from taslora_core.train.run_files import TRAIN_CONFIG

    path = supernet_dir / TRAIN_CONFIG
    if not path.exists():
        return default
    doc = json.loads(path.read_text())
    return int((doc.get("config") or doc).get("epochs", default))


def _test_with_and_without(mole_dir: Path, subnet) -> dict[str, Any]:
    """The searched subnet on the test set with and without its experts, paired on the same images."""
    from taslora_core.analysis import paired_bootstrap
    from taslora_core.data import DataConfig, build_data, make_loaders
    from taslora_core.evaluate import per_image
    from taslora_core.run_io import load_checkpoint

    loaded = load_checkpoint(mole_dir)
    cfg = DataConfig(**loaded.data)
    bundle = build_data(cfg, val_size=10)
    batches = list(make_loaders(bundle, cfg, batch_size=500, num_workers=0).test)
    ok_e, loss_e = per_image(loaded.supernet, subnet, batches, loaded.mole, use_experts=True)
    ok_s, loss_s = per_image(loaded.supernet, subnet, batches, loaded.mole, use_experts=False)
    top1 = paired_bootstrap(ok_e.double() - ok_s.double())
    loss = paired_bootstrap(loss_e.double() - loss_s.double())
    return {"top1_mole": float(ok_e.double().mean()), "loss_mole": float(loss_e.mean()),
            "top1_supernet": float(ok_s.double().mean()), "loss_supernet": float(loss_s.mean()),
            "test_images": int(ok_e.numel()), "top1_gain": top1.to_dict(), "loss_change": loss.to_dict()}


def _plots(workdir: Path, supernet_dir: Path, mole_dir: Path, export_dir: Path) -> dict[str, str]:
    from taslora_core.plots import plot_routing_heatmap, plot_training_curves, training_curve_points
    from taslora_core.slicing import LINEAR_LAYERS
    from taslora_deploy.artifacts import MODEL_CONFIG

    out: dict[str, str] = {}
    runs = {"supernet": training_curve_points(supernet_dir), "MoLE": training_curve_points(mole_dir)}
    try:
        out["training_curves"] = str(plot_training_curves(
            runs, workdir / "training_curves.png",
            keys=("train loss", "val loss (largest)", "val top-1 (largest)", "val loss (smallest)")))
    except ValueError as err:
        console.print(f"[yellow]note:[/] no training curves ({err})")
    config = json.loads((export_dir / MODEL_CONFIG).read_text())
    if config.get("routing"):
        path = plot_routing_heatmap(config["routing"], [f"block {b}" for b in range(len(config["routing"]))],
                                    list(LINEAR_LAYERS), export_dir / "routing.png",
                                    title="routing weights of the exported subnet (blocks x layers x experts)")
        out["routing_heatmap"] = str(path)
    return out


@app.command("quickstart")
@handle_errors
def quickstart_cmd(
    fast: Annotated[bool, typer.Option("--fast", help="Smoke version (~2 minutes on 2 cores): tiny budgets, same steps.")] = False,
    supernet: Annotated[Path | None, typer.Option("--supernet", help="Start from this trained supernet run folder (e.g. the converged one shipped in benchmarks/reproduction/supernet) instead of training one.")] = None,
    flops_budget: Annotated[str, typer.Option("--flops", help="Search budget, AutoFormer FLOPs counter (the fmnist space spans 2.6M..10.5M).")] = "6M",
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every step.")] = 0,
) -> None:
    """Train (or take) the fmnist supernet, train MoLE experts + router, search under a FLOPs budget, export and
    check it.

    Ends with one summary table: test top-1 of the searched subnet with and without MoLE (paired on the same
    test images, with a bootstrap 95% interval), its FLOPs/params, the parity error, the folded/baseline
    latency ratio and where the files are.
    """
    from taslora_core.analysis import PairedDifference
    from taslora_core.atomic import atomic_write_json
    from taslora_core.complexity import format_amount
    from taslora_core.run_io import is_supernet_dir
    from taslora_core.search import Constraints, SearchConfig, SearchRunConfig, run_search
    from taslora_core.subnet import Subnet
    from taslora_core.train import MoLETrainConfig, SupernetTrainConfig, train_mole, train_supernet
    from taslora_deploy import ExportOptions, export
    from taslora_deploy.artifacts import MODEL_CONFIG, MODEL_ONNX, MODEL_PLAN
    from taslora_deploy.bench import bench
    from taslora_deploy.trt_engine import tensorrt_status

    from taslora_cli.cmd_search import SearchPrinter

    plan = FAST if fast else FULL
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def say(message: str) -> None:
        console.print(escape(message), highlight=False, soft_wrap=True)

    def step(name: str, what: str):
        console.print(Rule(f"[bold]{name}[/]: {escape(what)}"))
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = round(time.perf_counter() - timings[name], 1)

    common = dict(workdir=str(workdir), seed=seed, train_subset=plan.train_subset, quiet=fast)
    if supernet is not None:
        supernet_dir = supernet.resolve()
        if not is_supernet_dir(supernet_dir):
            raise ValueError(f"--supernet {supernet} is not a taslora supernet run folder (no supernet.safetensors/space.json); "
                             "pass a folder written by `taslora supernet train` or `taslora supernet import`")
        console.print(Rule(f"[bold]supernet[/]: {escape(str(supernet_dir))} (given, not trained)"))
    else:
        step("supernet", f"train the fmnist supernet, {plan.supernet_epochs} epochs")
        supernet_dir = train_supernet(SupernetTrainConfig(
            space="fmnist", data="fmnist", epochs=plan.supernet_epochs, warmup_epochs=plan.supernet_warmup,
            lr=plan.supernet_lr, **common), log=say).run_dir
        done("supernet")
    mole_epochs = max(1, round(plan.mole_share * _supernet_epochs(supernet_dir, plan.supernet_epochs)))
    step("mole", f"train MoLE experts + router, {mole_epochs} epochs")
    mole_dir = train_mole(MoLETrainConfig(
        supernet=str(supernet_dir), epochs=mole_epochs, warmup_epochs=round(plan.mole_warmup_share * mole_epochs), expert_lr=plan.expert_lr,
        lora_alpha=plan.lora_alpha, router_lr=plan.router_lr, **common), log=say).run_dir
    done("mole")
    step("search", f"evolutionary search, FLOPs <= {flops_budget}")
    searched = run_search(SearchRunConfig(
        budget=Constraints.from_amounts(flops_budget),
        search=SearchConfig(population=plan.search_population, iterations=plan.search_iterations,
                            val_subset=plan.search_val_subset, seed=seed),
        ckpt=mole_dir, workdir=workdir), events=SearchPrinter())
    done("search")
    best = searched.best
    best_subnet = Subnet.from_dict(best["subnet"])
    trt_ok, trt_reason = tensorrt_status()
    step("export", "fold, check, write model.safetensors / model.onnx" + (" / model.plan" if trt_ok else ""))
    exported = export(searched.best_path, mole_dir, workdir=workdir, log=say, options=ExportOptions(
        onnx=True, trt=trt_ok, latency_mode="report", latency_iters=plan.latency_iters, seed=seed))
    done("export")
    if not exported.ok:
        raise ValueError(f"export failed: {'; '.join(f'{k}: {v}' for k, v in exported.failures.items())}")
    export_dir = exported.out
    step("bench", "onnxruntime CPU")
    bench_rows = bench(export_dir / MODEL_ONNX, batch_sizes=(1, 32), min_time_s=plan.bench_min_time_s,
                       warmup_s=0.2, min_iters=20, name=MODEL_ONNX)
    done("bench")
    console.print(Rule("[bold]evaluate[/]: searched subnet on the test set, with and without its experts"))
    test = _test_with_and_without(mole_dir, best_subnet)
    plots = _plots(workdir, supernet_dir, mole_dir, export_dir)
    if searched.run_dir is not None and (searched.run_dir / "fitness_vs_flops.png").exists():
        plots["fitness_vs_flops"] = str(searched.run_dir / "fitness_vs_flops.png")

    report = exported.report
    latency = report.get("zero_overhead_latency", {})
    summary = {
        "top1_with_mole": test["top1_mole"], "top1_supernet_only": test["top1_supernet"],
        "test_loss_with_mole": test["loss_mole"], "test_loss_supernet_only": test["loss_supernet"],
        "top1_gain_with_mole": test["top1_gain"], "test_loss_change_with_mole": test["loss_change"],
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
                  "export": str(export_dir), "onnx": str(export_dir / MODEL_ONNX), **plots},
        "timings_s": timings, "total_s": round(time.perf_counter() - started, 1), "fast": fast,
    }
    atomic_write_json(workdir / "quickstart-summary.json", summary)
    gain = PairedDifference(test["top1_gain"]["mean"], *test["top1_gain"]["ci95"], test["test_images"])
    table = Table(title="taslora quickstart summary" + (" (--fast smoke run)" if fast else ""))
    table.add_column("what")
    table.add_column("value")
    table.add_row("test top-1, searched subnet with MoLE", f"{test['top1_mole'] * 100:.2f}%")
    table.add_row("test top-1, same subnet, supernet only", f"{test['top1_supernet'] * 100:.2f}%")
    verdict = ("experts help" if gain.low > 0 else "experts hurt" if gain.high < 0 else "no difference beyond the interval")
    table.add_row("MoLE gain, paired on the same test images (95% CI)",
                  f"{gain.mean * 100:+.2f} points [{gain.low * 100:+.2f}, {gain.high * 100:+.2f}]: {verdict}")
    table.add_row("FLOPs (AutoFormer counter) / budget", f"{format_amount(best['flops_autoformer'])} / {flops_budget}")
    table.add_row("params", f"{best['params']:,}")
    table.add_row("fold parity (max |diff|)", f"{summary['fold_parity_max_abs']:.2e}")
    if summary["onnx_parity_max_abs"] is not None:
        table.add_row("onnxruntime parity (max |diff|)", f"{summary['onnx_parity_max_abs']:.2e}")
    if latency:
        table.add_row("latency folded / no-LoRA (onnxruntime)",
                      f"{latency['ratio_median']:.4f} (p10 {latency['ratio_p10']:.3f}, p90 {latency['ratio_p90']:.3f})")
    for row in bench_rows:
        table.add_row(f"ONNX latency, batch {row['batch']}", f"{row['p50_ms']:.3f} ms p50, {row['throughput_ips']:.0f} img/s")
    table.add_row("TensorRT", escape(summary["tensorrt"]) + (f" ({export_dir / MODEL_PLAN})" if trt_ok else ""))
    for name, path in summary["files"].items():
        table.add_row(name, path)
    table.add_row("total time", f"{summary['total_s']:.0f} s")
    console.print(table)
