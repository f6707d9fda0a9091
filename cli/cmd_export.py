"""`taslora export`, `taslora check-overhead`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from taslora_cli.app import DEFAULT_WORKDIR_PATH, WorkdirOpt, app, console, err_console, fail, handle_errors
from taslora_deploy.artifacts import BASELINE_ONNX, MODEL_ONNX

if TYPE_CHECKING:
    from taslora_deploy.pipeline import ExportResult


@app.command("export")
@handle_errors
def export_cmd(
    subnet: Annotated[Path | None, typer.Option("--subnet", help="Subnet JSON (default: best.json of the latest search).")] = None,
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="MoLE or supernet run folder (default: the search's checkpoint, else the latest MoLE run).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: a new exports/ run in the workspace).")] = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="Also export ONNX (single file, dynamic batch) and run the zero-overhead checks.")] = False,
    trt: Annotated[bool, typer.Option("--trt", help="Also build a TensorRT engine (needs TensorRT and a CUDA GPU; runs last).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Same as --precision fp16 (kept for older scripts).")] = False,
    precision: Annotated[list[str] | None, typer.Option("--precision", help="fp32|fp16|int8, repeatable or comma-separated (fp32 always). fp16: model_fp16.onnx (LayerNorm, softmax and head kept fp32); int8: model_int8.onnx (static QDQ, per-channel). Each is gated against fp32 on the test split; implies --onnx.")] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", help="int8 calibration images, taken from the run's held-out validation split (never the test set).")] = 512,
    max_top1_drop: Annotated[str | None, typer.Option("--max-top1-drop", help="Accuracy gates: allowed top-1 drop in points vs fp32 on the test split, e.g. 'fp16=0.2,int8=1.0' (the defaults); a failed gate fails that precision's step only.")] = None,
    gate_images: Annotated[int | None, typer.Option("--gate-images", help="Gate on the first N test images (default: the whole test split).")] = None,
    no_lora: Annotated[bool, typer.Option("--no-lora", help="Export the subnet of the frozen supernet without experts (the baseline).")] = False,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    latency_check: Annotated[str, typer.Option("--latency-check", help="strict: a folded/baseline latency ratio outside 1 +- 3% fails the export; report: only record it.")] = "strict",
    latency_iters: Annotated[int, typer.Option("--latency-iters", help="Interleaved A/B latency pairs (after 1 s warm-up).")] = 300,
    threads: Annotated[int | None, typer.Option("--threads", help="onnxruntime intra-op threads for the latency check (default: runtime's choice).")] = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random parity inputs.")] = 0,
    family: Annotated[Path | None, typer.Option("--family", help="Export every member of this pareto.json (`taslora search --pareto`) into its own folder, plus family.json/.md/.png.")] = None,
    members: Annotated[int | None, typer.Option("--members", help="With --family: export N members spread evenly along the front (both ends included; default all).")] = None,
    eval_test: Annotated[bool, typer.Option("--eval-test", help="With --family: also measure each member's test top-1.")] = False,
) -> None:
    """Fold the routed experts into the chosen subnet, check parity, write safetensors (+ ONNX, TensorRT).

    Everything lands in one folder: model.safetensors + config.json (loadable with
    taslora_deploy.load_standalone), model.onnx, baseline/model.onnx (--no-lora twin for the checks),
    model.plan, report.json. A failed step keeps everything written before it; the exit code is non-zero.
    """
    from taslora_deploy.pipeline import ExportOptions, export

    if latency_check not in ("strict", "report"):
        raise fail(f"--latency-check must be strict or report, not '{latency_check}'")
    from taslora_deploy.precision_gate import parse_drop_limits
    from taslora_deploy.precision_steps import parse_precisions

    opts = ExportOptions(onnx=onnx, trt=trt, fp16=fp16, no_lora=no_lora, opset=opset, latency_mode=latency_check,
                         latency_iters=latency_iters, threads=threads, seed=seed,
                         precisions=parse_precisions(precision), calib_size=calib_size,
                         max_top1_drop=parse_drop_limits(max_top1_drop), gate_images=gate_images)
    if family is not None or members is not None or eval_test:
        from taslora_cli.cmd_family import run_family_export

        return run_family_export(family, ckpt, out, members, opts, eval_test, workdir, subnet=subnet)
    result = export(subnet, ckpt, workdir=workdir, out=out, options=opts, log=console.print)
    console.print(report_table(result))
    console.print(f"report: {result.report_path}")
    if result.failures:
        for step, line in result.failures.items():
            err_console.print(f"[bold red]error:[/] {escape(f'{step}: {line}')}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def report_table(result: ExportResult) -> Table:
    """The export report as a rich table."""
    data = result.report
    table = Table(title="export report")
    table.add_column("check")
    table.add_column("result")
    table.add_column("ok", justify="center")

    def mark(step: str) -> str:
        entry = data.get(step) or {}
        return "[green]yes[/]" if entry.get("ok") else "[red]no[/]"

    def diff_text(value: float | None, suffix: str = "") -> str:
        return f"max |diff| {value:.2e}{suffix}" if value is not None else "checked"

    if "parity" in data:
        table.add_row("fold parity vs run-time MoLE", data["parity"].get("error") or diff_text(result.fold_parity_max_diff),
                      mark("parity"))
    if "onnx" in data:
        table.add_row("onnxruntime vs torch", data["onnx"].get("error") or
                      diff_text(result.onnx_parity_max_diff, " (batches 1, 7)"), mark("onnx"))
    if "zero_overhead_structure" in data:
        s = data["zero_overhead_structure"]
        table.add_row("same graph / params / FLOPs as no-LoRA", s.get("error") or
                      f"params {s.get('params_folded'):,} = {s.get('params_baseline'):,}", mark("zero_overhead_structure"))
    if "zero_overhead_latency" in data:
        lat = data["zero_overhead_latency"]
        text = lat.get("error") or (f"folded/baseline median {lat['ratio_median']:.4f} (p10 {lat['ratio_p10']:.3f}, "
                                    f"p90 {lat['ratio_p90']:.3f}); {lat['median_a_ms']:.3f} vs {lat['median_b_ms']:.3f} ms")
        table.add_row("latency within 3% (onnxruntime)", text, mark("zero_overhead_latency"))
    if "unmerged_vs_folded" in data:
        u = data["unmerged_vs_folded"]
        text = u.get("error") or f"unmerged MoLE is {u['ratio_median']:.2f}x the folded latency (torch eager)"
        table.add_row("what folding saves", text, mark("unmerged_vs_folded"))
    for precision in ("fp16", "int8"):
        step = f"onnx_{precision}"
        if step in data:
            table.add_row(f"{precision} ONNX vs fp32 (test split)", escape(_precision_text(data[step])), mark(step))
    for step in ("tensorrt", "tensorrt_fp16", "tensorrt_int8"):
        if step in data:
            entry = data[step]
            text = entry.get("error") or (_precision_text(entry) if "gate" in entry else "engine built and compared")
            table.add_row(step, escape(text), mark(step))
    return table


def _precision_text(entry: dict) -> str:
    """A precision step's gate numbers and file size (or its error, with the numbers when the gate measured them)."""
    from taslora_deploy.precision_gate import gate_summary

    gate = entry.get("gate")
    size = f"; {entry['size_bytes'] / 1e6:.2f} MB" if entry.get("size_bytes") else ""
    if entry.get("error"):
        return entry["error"] if not gate else f"FAILED gate: {gate_summary(gate)}"
    if gate and "skipped" in gate:
        return f"written, NOT accuracy-gated: {gate['skipped']}{size}"
    return f"{gate_summary(gate)}{size}" if gate else "written"


@app.command("check-overhead")
@handle_errors
def check_overhead_cmd(
    export_dir: Annotated[Path | None, typer.Argument(help=f"An export folder with {MODEL_ONNX} and {BASELINE_ONNX} (default: latest export).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Batch size of the latency runs.")] = 8,
    iters: Annotated[int, typer.Option("--iters", help="Interleaved A/B pairs.")] = 500,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Allowed |median ratio - 1|.")] = 0.03,
    device: Annotated[str, typer.Option("--device", help="onnxruntime device: cpu or cuda.")] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", help="onnxruntime intra-op threads.")] = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
) -> None:
    """Zero-overhead check of an export: same graph, params and FLOPs as the no-LoRA twin; latency within tolerance."""
    from taslora_deploy.overhead import check_overhead

    check = check_overhead(export_dir, workdir=workdir, batch=batch, iters=iters, tolerance=tolerance, device=device,
                           threads=threads)
    console.print(f"export: {check.export_dir}")
    structure, res = check.structure, check.latency
    table = Table(title="zero-overhead check (A = no-LoRA baseline, B = folded)")
    table.add_column("check")
    table.add_column("result")
    table.add_row("graph / params / FLOPs identical", "yes" if structure.get("equal") else f"NO: {structure.get('differences')}")
    table.add_row("median latency A / B (ms)", f"{res['median_a_ms']:.4f} / {res['median_b_ms']:.4f}")
    table.add_row("median pair ratio B/A", f"{res['ratio_median']:.4f} (p10 {res['ratio_p10']:.4f}, p90 {res['ratio_p90']:.4f}, IQR {res['ratio_iqr']:.4f})")
    table.add_row(f"within 1 +- {tolerance:g}", "yes" if check.latency_ok else "NO")
    console.print(table)
    console.print(f"report: {check.report_path}")
    if not check.ok:
        raise typer.Exit(1)
