"""`taslora quickstart`: the whole toolchain on the embedded default (Fashion-MNIST) in one command.

It chains the same commands a user types (supernet train -> train -> search -> export -> bench) through one
workspace, then evaluates the searched subnet on the test set with and without its experts, draws the
plots and ends with one summary table (also written to <workdir>/quickstart-summary.json).
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

from taslora_cli.app import DEFAULT_WORKDIR_PATH, WorkdirOpt, app, console, handle_errors, run_command


@dataclass(frozen=True)
class QuickstartPlan:
    """Budgets of the quickstart's steps."""

    supernet_epochs: int
    supernet_warmup: int
    supernet_lr: float  # base LR per 512 images (AutoFormer scales 5e-4 so); higher for short CPU runs
    mole_epochs: int
    mole_warmup: int
    expert_lr: float
    train_subset: int | None
    search_population: int
    search_iterations: int
    search_val_subset: int
    latency_iters: int
    bench_min_time_s: float


FULL = QuickstartPlan(supernet_epochs=6, supernet_warmup=1, supernet_lr=4e-3, mole_epochs=3, mole_warmup=0,
                      expert_lr=2e-3, train_subset=None,
                      search_population=20, search_iterations=6, search_val_subset=2000, latency_iters=300,
                      bench_min_time_s=1.0)
FAST = QuickstartPlan(supernet_epochs=1, supernet_warmup=0, supernet_lr=4e-3, mole_epochs=1, mole_warmup=0,
                      expert_lr=2e-3, train_subset=3000,
                      search_population=6, search_iterations=2, search_val_subset=500, latency_iters=60,
                      bench_min_time_s=0.2)


def _latest(workdir: Path, kind: str) -> Path:
    from taslora_core.workspace import latest

    return latest(workdir, kind, "the quickstart step that makes it failed")


def _metrics(run: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl as flat curve points: train loss per logged step, validation per epoch end."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    points: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        step = rec.get("global_step")
        if rec.get("type") == "step" and "loss" in rec:
            points.append({"step": step, "train loss": rec["loss"]})
        elif rec.get("type") == "epoch":
            for name, res in (rec.get("val") or {}).items():
                if isinstance(res, dict) and "loss" in res:
                    points.append({"step": step, f"val loss ({name})": res["loss"], f"val top-1 ({name})": res["top1"]})
    return points


def _test_top1(mole_dir: Path, subnet_path: Path) -> dict[str, float]:
    """Top-1 / loss of the searched subnet on the test set, with and without its experts."""
    from taslora_core.data import DataConfig, build_data, make_loaders
    from taslora_core.evaluate import evaluate
    from taslora_core.run_io import load_checkpoint
    from taslora_core.subnet import Subnet

    loaded = load_checkpoint(mole_dir)
    cfg = DataConfig(**loaded.data)
    bundle = build_data(cfg, val_size=10)
    batches = list(make_loaders(bundle, cfg, batch_size=500, num_workers=0).test)
    subnet = Subnet.load(subnet_path)
    with_e = evaluate(loaded.supernet, subnet, batches, loaded.mole, use_experts=True)
    without = evaluate(loaded.supernet, subnet, batches, loaded.mole, use_experts=False)
    return {"top1_mole": with_e.top1, "loss_mole": with_e.loss, "top1_supernet": without.top1,
            "loss_supernet": without.loss, "test_images": with_e.count}


def _plots(workdir: Path, supernet_dir: Path, mole_dir: Path, export_dir: Path) -> dict[str, str]:
    from taslora_core.plots import plot_routing_heatmap, plot_training_curves
    from taslora_core.slicing import LINEAR_LAYERS

    out: dict[str, str] = {}
    runs = {"supernet": _metrics(supernet_dir), "MoLE": _metrics(mole_dir)}
    try:
        out["training_curves"] = str(plot_training_curves(
            runs, workdir / "training_curves.png",
            keys=("train loss", "val loss (largest)", "val top-1 (largest)", "val loss (smallest)")))
    except ValueError as err:
        console.print(f"[yellow]note:[/] no training curves ({err})")
    config = json.loads((export_dir / "config.json").read_text())
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
    flops_budget: Annotated[str, typer.Option("--flops", help="Search budget, AutoFormer FLOPs counter (the fmnist space spans 2.6M..10.5M).")] = "6M",
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every step.")] = 0,
) -> None:
    """Train the fmnist supernet, train MoLE experts + router, search under a FLOPs budget, export and check it.

    Ends with one summary table: test top-1 of the searched subnet with and without MoLE, its FLOPs/params,
    the parity error, the folded/baseline latency ratio and where the files are.
    """
    from taslora_core.complexity import format_amount
    from taslora_deploy.bench import bench
    from taslora_deploy.trt_engine import tensorrt_status

    plan = FAST if fast else FULL
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    common = ["--workdir", str(workdir), "--seed", str(seed)]
    subset = ["--train-subset", str(plan.train_subset)] if plan.train_subset else []
    quiet = ["--quiet"] if fast else []
    timings: dict[str, float] = {}

    def step(name: str, args: list[str]) -> None:
        t0 = time.perf_counter()
        run_command(name, args)
        timings[name] = round(time.perf_counter() - t0, 1)

    step("supernet", ["supernet", "train", "--space", "fmnist", "--data", "fmnist", "--epochs", str(plan.supernet_epochs),
                      "--warmup-epochs", str(plan.supernet_warmup), "--lr", str(plan.supernet_lr), *subset, *quiet, *common])
    supernet_dir = _latest(workdir, "supernets")
    step("mole", ["train", "--supernet", str(supernet_dir), "--epochs", str(plan.mole_epochs),
                  "--warmup-epochs", str(plan.mole_warmup), "--expert-lr", str(plan.expert_lr), *subset, *quiet, *common])
    mole_dir = _latest(workdir, "mole")
    step("search", ["search", "--ckpt", str(mole_dir), "--flops", flops_budget, "--population", str(plan.search_population),
                    "--iterations", str(plan.search_iterations), "--val-subset", str(plan.search_val_subset), *common])
    search_dir = _latest(workdir, "searches")
    trt_ok, trt_reason = tensorrt_status()
    step("export", ["export", "--subnet", str(search_dir / "best.json"), "--ckpt", str(mole_dir), "--onnx",
                    *(["--trt"] if trt_ok else []), "--latency-check", "report", "--latency-iters", str(plan.latency_iters),
                    *common])
    export_dir = _latest(workdir, "exports")
    console.print(Rule("[bold]bench[/]: onnxruntime CPU"))
    t0 = time.perf_counter()
    bench_rows = bench(export_dir / "model.onnx", batch_sizes=(1, 32), min_time_s=plan.bench_min_time_s,
                       warmup_s=0.2, min_iters=20, name="model.onnx")
    timings["bench"] = round(time.perf_counter() - t0, 1)
    console.print(Rule("[bold]evaluate[/]: searched subnet on the test set"))
    test = _test_top1(mole_dir, search_dir / "best.json")
    plots = _plots(workdir, supernet_dir, mole_dir, export_dir)
    if (search_dir / "fitness_vs_flops.png").exists():
        plots["fitness_vs_flops"] = str(search_dir / "fitness_vs_flops.png")

    best = json.loads((search_dir / "best.json").read_text())
    report = json.loads((export_dir / "report.json").read_text())
    parity = max(v for ref in report["parity"]["max_abs_diff"].values() for v in ref.values())
    onnx_parity = report.get("onnx", {}).get("parity", {}).get("max_abs_diff")
    latency = report.get("zero_overhead_latency", {})
    summary = {
        "top1_with_mole": test["top1_mole"], "top1_supernet_only": test["top1_supernet"],
        "test_loss_with_mole": test["loss_mole"], "test_loss_supernet_only": test["loss_supernet"],
        "test_images": test["test_images"], "flops_budget": flops_budget, "flops_autoformer": best.get("flops"),
        "params": best.get("params"), "subnet": {k: best[k] for k in ("embed_dim", "depth", "mlp_ratio", "num_heads")},
        "fold_parity_max_abs": parity, "onnx_parity_max_abs": onnx_parity,
        "latency_ratio_folded_vs_baseline": latency.get("ratio_median"),
        "latency_ratio_p10_p90": [latency.get("ratio_p10"), latency.get("ratio_p90")],
        "latency_within_3pct": latency.get("within_tolerance"), "same_structure_as_no_lora": report.get("zero_overhead_structure", {}).get("equal"),
        "unmerged_over_folded_latency": report.get("unmerged_vs_folded", {}).get("ratio_median"),
        "onnx_bench": [{"batch": r["batch"], "p50_ms": r["p50_ms"], "throughput_ips": r["throughput_ips"]} for r in bench_rows],
        "tensorrt": "built" if trt_ok else f"skipped: {trt_reason}",
        "files": {"supernet": str(supernet_dir), "mole": str(mole_dir), "search": str(search_dir), "export": str(export_dir),
                  "onnx": str(export_dir / "model.onnx"), **plots},
        "timings_s": timings, "total_s": round(time.perf_counter() - started, 1), "fast": fast,
    }
    from taslora_core.checkpoint import atomic_write_json

    atomic_write_json(workdir / "quickstart-summary.json", summary)
    table = Table(title="taslora quickstart summary" + (" (--fast smoke run)" if fast else ""))
    table.add_column("what")
    table.add_column("value")
    table.add_row("test top-1, searched subnet with MoLE", f"{test['top1_mole'] * 100:.2f}%")
    table.add_row("test top-1, same subnet, supernet only", f"{test['top1_supernet'] * 100:.2f}%")
    table.add_row("FLOPs (AutoFormer counter) / budget", f"{format_amount(best['flops'])} / {flops_budget}")
    table.add_row("params", f"{best['params']:,}")
    table.add_row("fold parity (max |diff|)", f"{parity:.2e}")
    if onnx_parity is not None:
        table.add_row("onnxruntime parity (max |diff|)", f"{onnx_parity:.2e}")
    if latency:
        table.add_row("latency folded / no-LoRA (onnxruntime)",
                      f"{latency['ratio_median']:.4f} (p10 {latency['ratio_p10']:.3f}, p90 {latency['ratio_p90']:.3f})")
    for row in bench_rows:
        table.add_row(f"ONNX latency, batch {row['batch']}", f"{row['p50_ms']:.3f} ms p50, {row['throughput_ips']:.0f} img/s")
    table.add_row("TensorRT", escape(summary["tensorrt"]))
    for name, path in summary["files"].items():
        table.add_row(name, path)
    table.add_row("total time", f"{summary['total_s']:.0f} s")
    console.print(table)
