"""`taslora quickstart`: options and the summary table of `taslora_deploy.quickstart.quickstart` (the verb)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from taslora_cli.app import DEFAULT_WORKDIR_PATH, WorkdirOpt, app, console, fail, handle_errors


@app.command("quickstart")
@handle_errors
def quickstart_cmd(
    fast: Annotated[bool, typer.Option("--fast", help="Smoke version (~2 minutes on 2 cores): tiny budgets, same steps.")] = False,
    supernet: Annotated[Path | None, typer.Option("--supernet", help="Start from this trained supernet run folder (`bash scripts/run.sh quickstart` passes the converged wide-space supernet shipped in benchmarks/reproduction-wide/supernet) instead of training one.")] = None,
    flops_budget: Annotated[str, typer.Option("--flops", help="Search budget, AutoFormer FLOPs counter (fmnist spans 2.6M..10.5M, fmnist-wide 0.3M..10.5M).")] = "6M",
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every step.")] = 0,
) -> None:
    """Train (or take) the fmnist supernet, train MoLE experts + router, search under a FLOPs budget, specialise the
    searched subnet, export and check it.

    Ends with one summary table: test top-1 of the searched subnet with the supernet alone, with MoLE and
    specialised (each gain paired on the same test images, with a bootstrap 95% interval, and its cost), its
    FLOPs/params, the parity error, the folded/baseline latency ratio and where the files are.
    """
    from taslora_core.complexity import format_amount
    from taslora_core.data import DataUnavailable
    from taslora_deploy.errors import OnnxRuntimeMissing
    from taslora_deploy.quickstart import quickstart

    from taslora_cli.cmd_search import SearchPrinter

    def say(message: str) -> None:
        console.print(escape(message), highlight=False, soft_wrap=True)

    def stage(name: str, what: str) -> None:
        console.print(Rule(f"[bold]{name}[/]: {escape(what)}"))

    try:
        s = quickstart(fast, supernet, flops_budget, workdir, seed, log=say, stage=stage, search_events=SearchPrinter())
    except (DataUnavailable, OnnxRuntimeMissing) as err:  # something this machine lacks: the doctor lists it all
        raise fail(f"{err}; `taslora doctor` shows what this machine has and lacks") from None
    def verdict(ci: list[float]) -> str:
        low, high = ci
        return ("a gain beyond the interval" if low > 0 else "a loss beyond the interval" if high < 0
                else "no difference beyond the interval")

    def gain_cell(gain: dict, seconds: float | None) -> str:
        low, high = gain["ci95"]
        cost = f"; {seconds:.0f} s" if seconds is not None else ""
        return f"{gain['mean'] * 100:+.2f} points [{low * 100:+.2f}, {high * 100:+.2f}]: {verdict(gain['ci95'])}{cost}"

    lat = s["latency_ratio_folded_vs_baseline"]
    table = Table(title="taslora quickstart summary" + (" (--fast smoke run)" if fast else ""))
    table.add_column("what")
    table.add_column("value")
    table.add_row("test top-1, searched subnet, supernet only", f"{s['top1_supernet_only'] * 100:.2f}%")
    table.add_row("test top-1, same subnet with MoLE", f"{s['top1_with_mole'] * 100:.2f}%")
    table.add_row("MoLE gain, paired on the same test images (95% CI); training cost",
                  gain_cell(s["top1_gain_with_mole"], s.get("mole_seconds")))
    if s.get("top1_specialized") is not None:
        spec = s["specialize"]
        table.add_row("test top-1, specialised (what the export folds)", f"{s['top1_specialized'] * 100:.2f}%")
        table.add_row(f"specialize gain over the supernet (95% CI); {spec['steps_run']} steps",
                      gain_cell(s["top1_gain_specialized"], spec.get("seconds")))
        table.add_row("specialize gain over MoLE (95% CI)",
                      gain_cell(s["top1_gain_specialized_over_mole"], None))
    table.add_row("FLOPs (AutoFormer counter) / budget", f"{format_amount(s['flops_autoformer'])} / {flops_budget}")
    table.add_row("params", f"{s['params']:,}")
    table.add_row("fold parity (max |diff|)", f"{s['fold_parity_max_abs']:.2e}")
    if s["onnx_parity_max_abs"] is not None:
        table.add_row("onnxruntime parity (max |diff|)", f"{s['onnx_parity_max_abs']:.2e}")
    if lat is not None:
        p10, p90 = s["latency_ratio_p10_p90"]
        table.add_row("latency folded / no-LoRA (onnxruntime)", f"{lat:.4f} (p10 {p10:.3f}, p90 {p90:.3f})")
    for row in s["onnx_bench"]:
        table.add_row(f"ONNX latency, batch {row['batch']}", f"{row['p50_ms']:.3f} ms p50, {row['throughput_ips']:.0f} img/s")
    table.add_row("TensorRT", escape(s["tensorrt"]))
    for name, path in s["files"].items():
        table.add_row(name, path)
    table.add_row("total time", f"{s['total_s']:.0f} s")
    console.print(table)
