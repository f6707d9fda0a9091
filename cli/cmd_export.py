"""`taslora export`, `taslora check-overhead`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from taslora_cli.app import DEFAULT_WORKDIR_PATH, WorkdirOpt, app, console, err_console, fail, handle_errors
from taslora_cli.certificate_tables import latency_text, side_by_side_table, styled
from taslora_deploy.artifacts import BASELINE_ONNX, MODEL_ONNX
from taslora_deploy.certificate.latency import EXPORT_TEST, RECHECK_TEST

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
    latency_check: Annotated[str, typer.Option("--latency-check", help="strict: a latency verdict 'different' (folded/baseline slower than 1 + margin: the one-sided lower bound above it) fails the export; 'inconclusive' (too noisy to decide) only warns; a faster folded model passes with a note; report: record it, never fail; off: do not measure.")] = "strict",
    latency_margin: Annotated[float, typer.Option("--latency-margin", help="Latency margin m: the folded model passes when its one-sided upper bound of folded/baseline is below 1 + m, fails when the lower bound is above it (5% error each, over all looks).")] = EXPORT_TEST.margin,
    latency_time_s: Annotated[float, typer.Option("--latency-time-s", help="Seconds of timed A/B pairs per batch size at most; the looks are planned to fill it, and the test stops at the first verdict.")] = EXPORT_TEST.time_limit_s,
    latency_batches: Annotated[str, typer.Option("--latency-batches", help="Comma-separated batch sizes of the latency test.")] = "1,8",
    latency_iters: Annotated[int, typer.Option("--latency-iters", help="Interleaved A/B pairs at the first look at the verdict (after a 0.5 s warm-up).")] = EXPORT_TEST.first_pairs,
    latency_runtime: Annotated[str | None, typer.Option("--latency-runtime", help="ort-cpu, ort-cuda, torch-cpu, torch-cuda or torch-cuda-graph (default: ort-cpu with --onnx, else torch-cpu).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Intra-op threads for the latency test (default: runtime's choice).")] = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random parity inputs.")] = 0,
    family: Annotated[Path | None, typer.Option("--family", help="Export every member of this pareto.json (`taslora search --pareto`) into its own folder, plus family.json/.md/.png.")] = None,
    members: Annotated[int | None, typer.Option("--members", help="With --family: export N members spread evenly along the front (both ends included; default all).")] = None,
    eval_test: Annotated[bool, typer.Option("--eval-test", help="With --family: also measure each member's test top-1.")] = False,
    specialized: Annotated[Path | None, typer.Option("--specialized", help="Fold this specialize run (`taslora specialize`; default: the newest one of the exported subnet and checkpoint in the workspace, if any; without --subnet its subnet and checkpoint are exported).")] = None,
    no_specialize: Annotated[bool, typer.Option("--no-specialize", help="Fold the routed experts even if a specialize run of this subnet exists.")] = False,
    specialize_epochs: Annotated[int | None, typer.Option("--specialize-epochs", help="Run `taslora specialize` for N epochs first (with --family: for every member), then fold its result.")] = None,
) -> None:
    """Fold the routed experts into the chosen subnet, check parity, write safetensors (+ ONNX, TensorRT).

    Everything lands in one folder: model.safetensors + config.json (loadable with
    taslora_deploy.load_standalone), model.onnx, baseline/model.onnx (--no-lora twin for the checks),
    model.plan, report.json, and a zero-overhead certificate per artifact (certificate.json: structure, parity,
    latency, verdict). A failed step keeps everything written before it; the exit code is non-zero.
    """
    from taslora_cli.certificate_tables import parse_batches
    from taslora_deploy.pipeline import ExportOptions, export
    from taslora_deploy.precision.gate import parse_drop_limits
    from taslora_deploy.precision.steps import parse_precisions

    opts = ExportOptions(onnx=onnx, trt=trt, fp16=fp16, no_lora=no_lora, opset=opset, latency_mode=latency_check,
                         latency_iters=latency_iters, latency_margin=latency_margin, latency_time_s=latency_time_s,
                         latency_batches=parse_batches(latency_batches, "--latency-batches"),
                         latency_runtime=latency_runtime, threads=threads, seed=seed,
                         precisions=parse_precisions(precision), calib_size=calib_size,
                         max_top1_drop=parse_drop_limits(max_top1_drop), gate_images=gate_images,
                         specialize=not no_specialize, specialize_epochs=specialize_epochs)
    if family is not None or members is not None or eval_test:
        from taslora_cli.cmd_family import run_family_export

        if specialized is not None:
            raise fail(f"--specialized {specialized} names one subnet's run; with --family use --specialize-epochs N")
        return run_family_export(family, ckpt, out, members, opts, eval_test, workdir, subnet=subnet)
    result = export(subnet, ckpt, workdir=workdir, out=out, options=opts, log=console.print, specialized=specialized)
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

    spec = (data.get("source") or {}).get("specialized")
    if spec:
        table.add_row("specialized (folded)", escape(
            f"{spec['weights']}, {spec['steps_run']} steps, {spec['wall_seconds']:.0f} s: validation top-1 "
            f"{100 * spec['val_top1_before']:.2f}% -> {100 * spec['val_top1_after']:.2f}% ({spec['run']})"), "[green]yes[/]")
    if "parity" in data:
        table.add_row("fold parity vs " + ("supernet + specialized deltas" if spec else "run-time MoLE"),
                      data["parity"].get("error") or diff_text(result.fold_parity_max_diff), mark("parity"))
    if "onnx" in data:
        table.add_row("onnxruntime vs torch", data["onnx"].get("error") or
                      diff_text(result.onnx_parity_max_diff, " (batches 1, 7)"), mark("onnx"))
    if "zero_overhead_structure" in data:
        s = data["zero_overhead_structure"]
        table.add_row("same graph / params / FLOPs as no-LoRA", s.get("error") or
                      f"params {s.get('params_folded'):,} = {s.get('params_baseline'):,}", mark("zero_overhead_structure"))
    if "zero_overhead_latency" in data:
        lat = data["zero_overhead_latency"]
        text = latency_text(lat) if "batches" in lat else escape(lat.get("error", ""))
        margin = lat.get("margin", 0.02)
        table.add_row(f"latency equivalent within {100 * margin:g}% ({lat.get('runtime', '?')})", text,
                      styled(lat["verdict"]) if "verdict" in lat else mark("zero_overhead_latency"))
    if "unmerged_vs_folded" in data:
        u = data["unmerged_vs_folded"]
        text = u.get("error") or (f"not applicable: {u['skipped']}" if "skipped" in u else
                                  f"unmerged MoLE is {u['ratio_median']:.2f}x the folded latency (torch eager)")
        table.add_row("what folding saves", text, mark("unmerged_vs_folded"))
    for precision in ("fp16", "int8"):
        step = f"onnx_{precision}"
        if step in data:
            table.add_row(f"{precision} ONNX vs fp32 (test split)", escape(_precision_text(data[step])), mark(step))
    for precision, cert in result.certificates.items():
        table.add_row(f"certificate ({precision})", escape(f"{cert['file']}: {'; '.join(cert['reasons']) or cert['verdict']}"),
                      styled(cert["verdict"]))
    if "certificate" in data and not data["certificate"].get("certificates"):
        table.add_row("certificates", escape(data["certificate"].get("error", "")), mark("certificate"))
    for step in ("tensorrt", "tensorrt_fp16", "tensorrt_int8"):
        if step in data:
            entry = data[step]
            text = entry.get("error") or (_precision_text(entry) if "gate" in entry else "engine built and compared")
            table.add_row(step, escape(text), mark(step))
    return table


def _precision_text(entry: dict) -> str:
    """A precision step's gate numbers and file size (or its error, with the numbers when the gate measured them)."""
    from taslora_deploy.precision.gate import gate_summary

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
    batch: Annotated[list[int] | None, typer.Option("--batch", help="Batch size of the latency test (repeatable; default 1 and 8).")] = None,
    iters: Annotated[int, typer.Option("--iters", help="Interleaved A/B pairs at the first look at the verdict.")] = RECHECK_TEST.first_pairs,
    margin: Annotated[float, typer.Option("--margin", help="Latency margin m: passes when the one-sided upper bound of folded/baseline is below 1 + m, fails when the lower bound is above it.")] = RECHECK_TEST.margin,
    time_s: Annotated[float, typer.Option("--time-s", help="Seconds of timed pairs per batch size at most.")] = RECHECK_TEST.time_limit_s,
    runtime: Annotated[str, typer.Option("--runtime", help="ort-cpu, ort-cuda, trt or trt-graph (TensorRT: the shipped engine against a no-LoRA engine built now).")] = "ort-cpu",
    precision: Annotated[str, typer.Option("--precision", help="Which artifact: fp32 (model.onnx), fp16 or int8 (the twins).")] = "fp32",
    threads: Annotated[int | None, typer.Option("--threads", help="Intra-op threads.")] = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
) -> None:
    """Re-check an export's zero overhead on this machine: structure (also against its certificate) and the latency
    equivalence test, printed next to the verdict the certificate recorded at export."""
    from taslora_deploy.certificate.check import latency_side_by_side
    from taslora_deploy.overhead import check_overhead

    config = RECHECK_TEST.with_options(batch_sizes=tuple(batch) if batch else None, margin=margin, first_pairs=iters,
                                       max_pairs=max(iters, RECHECK_TEST.max_pairs), time_limit_s=time_s)
    check = check_overhead(export_dir, workdir=workdir, config=config, runtime=runtime, precision=precision,
                           threads=threads, log=console.print)
    console.print(f"export: {check.export_dir}")
    s = check.structure
    same = "yes" if check.same_structure else f"NO: {'; '.join(s.get('differences', []))}"
    cert = s.get("certificate")
    console.print(f"graph / params / MACs / FLOPs identical to the no-LoRA twin: {escape(same)}"
                  + (f"; certificate: {escape(cert['detail'])}" if cert else "; no certificate to compare with"))
    doc_latency = (check.certificate or {}).get("latency")
    console.print(side_by_side_table(latency_side_by_side(doc_latency, check.latency),
                                     f"latency, A = no-LoRA baseline, B = folded ({runtime})"))
    console.print(f"report: {check.report_path}")
    if check.latency_verdict == "inconclusive":
        err_console.print(f"warning: latency is inconclusive here (too noisy to decide within {time_s:g} s per batch "
                          "size); re-run on a quieter machine or with a larger --time-s", highlight=False, soft_wrap=True)
    if not check.ok:
        raise typer.Exit(1)
