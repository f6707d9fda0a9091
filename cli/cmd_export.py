"""`taslora export`, `taslora check-overhead`, `taslora bench`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.markup import escape
from rich.table import Table

from taslora_cli.app import DEFAULT_WORKDIR_PATH, app, console, err_console, fail, handle_errors
from taslora_core.subnet import Subnet
from taslora_core.workspace import latest, new_run


def real_images(data: dict[str, Any] | None, n: int = 16) -> torch.Tensor | None:
    """The first `n` test images of the data a checkpoint was trained on (None when unavailable)."""
    if not data:
        return None
    from taslora_core.data import DataConfig, build_data, make_loaders

    try:
        cfg = DataConfig(**data)
        bundle = build_data(cfg, val_size=n)
        images, _ = next(iter(make_loaders(bundle, cfg, batch_size=n, num_workers=0).test))
        return images[:n]
    except Exception as err:  # noqa: BLE001 - real images are a bonus check; say why they are missing
        err_console.print(f"[yellow]note:[/] no real images for the parity check ({' '.join(str(err).split())})")
        return None


def _resolve_subnet(workdir: Path, subnet: Path | None) -> tuple[Path, dict[str, Any]]:
    path = subnet or latest(workdir, "searches", "run `taslora search --flops ...` first or pass --subnet FILE") / "best.json"
    if not path.exists():
        raise FileNotFoundError(f"subnet file {path} does not exist; pass --subnet FILE")
    doc = json.loads(path.read_text()) if path.suffix == ".json" else {}
    return path, doc


@app.command("export")
@handle_errors
def export_cmd(
    subnet: Annotated[Path | None, typer.Option("--subnet", help="Subnet JSON (default: best.json of the latest search).")] = None,
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="MoLE or supernet run folder (default: the search's checkpoint, else the latest MoLE run).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: a new exports/ run in the workspace).")] = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="Also export ONNX (single file, dynamic batch) and run the zero-overhead checks.")] = False,
    trt: Annotated[bool, typer.Option("--trt", help="Also build a TensorRT engine (needs TensorRT and a CUDA GPU; runs last).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write a half-precision ONNX (and TensorRT fp16 engine with --trt).")] = False,
    no_lora: Annotated[bool, typer.Option("--no-lora", help="Export the subnet of the frozen supernet without experts (the baseline).")] = False,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    latency_check: Annotated[str, typer.Option("--latency-check", help="strict: a folded/baseline latency ratio outside 1 +- 3% fails the export; report: only record it.")] = "strict",
    latency_iters: Annotated[int, typer.Option("--latency-iters", help="Interleaved A/B latency pairs (after 1 s warm-up).")] = 300,
    threads: Annotated[int | None, typer.Option("--threads", help="onnxruntime intra-op threads for the latency check (default: runtime's choice).")] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Workspace folder.")] = DEFAULT_WORKDIR_PATH,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random parity inputs.")] = 0,
) -> None:
    """Fold the routed experts into the chosen subnet, check parity, write safetensors (+ ONNX, TensorRT).

    Everything lands in one folder: model.safetensors + config.json (loadable with
    taslora_deploy.load_standalone), model.onnx, baseline/model.onnx (--no-lora twin for the checks),
    model.plan, report.json. A failed step keeps everything written before it; the exit code is non-zero.
    """
    from taslora_core.run_io import load_checkpoint, resolve_mole
    from taslora_deploy.pipeline import ExportOptions, run_export

    if latency_check not in ("strict", "report"):
        raise fail(f"--latency-check must be strict or report, not '{latency_check}'")
    subnet_path, doc = _resolve_subnet(workdir, subnet)
    ckpt_path = ckpt or (Path(doc["ckpt"]) if doc.get("ckpt") else resolve_mole(workdir, None))
    console.print(f"subnet: {subnet_path}")
    console.print(f"checkpoint: {ckpt_path}")
    loaded = load_checkpoint(ckpt_path)
    chosen = Subnet.load(subnet_path)
    if loaded.mole is not None and not no_lora:
        chosen.check_in_space(loaded.supernet.space)
    else:
        chosen.check_fits(loaded.supernet.space)
    out_dir = out or new_run(workdir, "exports", "no-lora" if no_lora else "export")
    console.print(f"output: {out_dir}")
    opts = ExportOptions(out=out_dir, onnx=onnx, trt=trt, fp16=fp16, no_lora=no_lora, opset=opset,
                         latency_mode=latency_check, latency_iters=latency_iters, threads=threads, seed=seed)
    report = run_export(loaded, chosen, opts, real_images(loaded.data), log=console.print)
    console.print(report_table(report.data))
    console.print(f"report: {report.path}")
    if report.failures:
        for line in report.failures:
            err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def report_table(data: dict[str, Any]) -> Table:
    """The export report as a rich table."""
    table = Table(title="export report")
    table.add_column("check")
    table.add_column("result")
    table.add_column("ok", justify="center")

    def mark(step: str) -> str:
        entry = data.get(step) or {}
        return "[green]yes[/]" if entry.get("ok") else "[red]no[/]"

    if "parity" in data:
        p = data["parity"]
        worst = max((v for ref in p.get("max_abs_diff", {}).values() for v in ref.values()), default=float("nan"))
        table.add_row("fold parity vs run-time MoLE", p.get("error") or f"max |diff| {worst:.2e}", mark("parity"))
    if "onnx" in data:
        o = data["onnx"]
        table.add_row("onnxruntime vs torch", o.get("error") or _onnx_parity_text(o), mark("onnx"))
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
    for step in ("tensorrt", "tensorrt_fp16"):
        if step in data:
            table.add_row(step, escape(data[step].get("error") or "engine built and compared"), mark(step))
    return table


def _onnx_parity_text(o: dict[str, Any]) -> str:
    parity = o.get("parity", {})
    vals = [v for v in _floats(parity)]
    return f"max |diff| {max(vals):.2e} (batches 1, 7)" if vals else "checked"


def _floats(obj: Any):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if "diff" in str(k) or isinstance(v, dict):
                yield from _floats(v)


@app.command("check-overhead")
@handle_errors
def check_overhead_cmd(
    export_dir: Annotated[Path | None, typer.Argument(help="An export folder with model.onnx and baseline/model.onnx (default: latest export).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Batch size of the latency runs.")] = 8,
    iters: Annotated[int, typer.Option("--iters", help="Interleaved A/B pairs.")] = 500,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Allowed |median ratio - 1|.")] = 0.03,
    device: Annotated[str, typer.Option("--device", help="onnxruntime device: cpu or cuda.")] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", help="onnxruntime intra-op threads.")] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Workspace folder.")] = DEFAULT_WORKDIR_PATH,
) -> None:
    """Zero-overhead check of an export: same graph, params and FLOPs as the no-LoRA twin; latency within tolerance."""
    from taslora_core.checkpoint import atomic_write_json
    from taslora_deploy.overhead import interleaved_latency, ort_runner, structural_compare, within_tolerance

    directory = export_dir or latest(workdir, "exports", "run `taslora export --onnx` first")
    folded, base = directory / "model.onnx", directory / "baseline" / "model.onnx"
    if not folded.exists() or not base.exists():
        raise fail(f"{directory} lacks model.onnx or baseline/model.onnx; re-run `taslora export --onnx`")
    console.print(f"export: {directory}")
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").exists() else {}
    f = config.get("flops_macs")
    structure = structural_compare(folded, base, flops_a=f, flops_b=f)
    shape = tuple(config.get("input_shape", ())) or None
    res = interleaved_latency(ort_runner(base, batch, shape, device=device, threads=threads),
                              ort_runner(folded, batch, shape, device=device, threads=threads), iters=iters)
    ok_lat = within_tolerance(res, tolerance, two_sided=True)
    result = {"structure": structure, "latency": {**res, "runtime": f"onnxruntime-{device}", "batch": batch,
                                                   "tolerance": tolerance, "within_tolerance": ok_lat}}
    atomic_write_json(directory / "overhead.json", result)
    table = Table(title="zero-overhead check (A = no-LoRA baseline, B = folded)")
    table.add_column("check")
    table.add_column("result")
    table.add_row("graph / params / FLOPs identical", "yes" if structure.get("equal") else f"NO: {structure.get('differences')}")
    table.add_row("median latency A / B (ms)", f"{res['median_a_ms']:.4f} / {res['median_b_ms']:.4f}")
    table.add_row("median pair ratio B/A", f"{res['ratio_median']:.4f} (p10 {res['ratio_p10']:.4f}, p90 {res['ratio_p90']:.4f}, IQR {res['ratio_iqr']:.4f})")
    table.add_row(f"within 1 +- {tolerance:g}", "yes" if ok_lat else "NO")
    console.print(table)
    console.print(f"report: {directory / 'overhead.json'}")
    if not structure.get("equal") or not ok_lat:
        raise typer.Exit(1)


@app.command("bench")
@handle_errors
def bench_cmd(
    artifacts: Annotated[list[Path] | None, typer.Argument(help=".onnx files, TensorRT .plan/.engine files, or export folders (standalone PyTorch). Default: the latest export's model.onnx and its folder.")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8,32",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda (onnxruntime provider / torch device).")] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", help="Intra-op threads (default: runtime's choice).")] = None,
    warmup_s: Annotated[float, typer.Option("--warmup-s", help="Warm-up seconds per artifact and batch size.")] = 0.5,
    min_iters: Annotated[int, typer.Option("--min-iters", help="Minimum timed iterations.")] = 50,
    min_time_s: Annotated[float, typer.Option("--min-time-s", help="Minimum timed seconds.")] = 1.0,
    compile_: Annotated[bool, typer.Option("--compile", help="Also time torch.compile for PyTorch artifacts (falls back to eager with a note).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON here (default: bench.json beside the first artifact).")] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Workspace folder.")] = DEFAULT_WORKDIR_PATH,
) -> None:
    """Latency (mean/median/p90/p95/p99) and throughput of artifacts side by side, with the environment."""
    from taslora_deploy.bench import bench, bench_table, environment, write_json

    try:
        sizes = tuple(int(s) for s in batch_sizes.split(",") if s.strip())
    except ValueError:
        raise fail(f"--batch-sizes must be comma-separated integers, not '{batch_sizes}'") from None
    if not artifacts:
        exp = latest(workdir, "exports", "run `taslora export --onnx` first or name the artifacts")
        artifacts = [p for p in (exp / "model.onnx", exp) if p.exists()]
    results: list[dict] = []
    for art in artifacts:
        if not art.exists():
            raise fail(f"artifact {art} does not exist")
        console.print(f"benchmarking {art}")
        label = f"{art.name}/ (torch)" if art.is_dir() else art.name
        results += bench(art, name=label, batch_sizes=sizes, warmup_s=warmup_s, min_iters=min_iters, min_time_s=min_time_s,
                         device=device, threads=threads, compile=compile_)
    console.print(bench_table(results))
    env = environment(device, threads)
    console.print(f"environment: {json.dumps(env)}")
    target = json_out or (artifacts[0] if artifacts[0].is_dir() else artifacts[0].parent) / "bench.json"
    write_json(results, target)
    console.print(f"results: {target}")
