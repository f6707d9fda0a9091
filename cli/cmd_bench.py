"""`taslora bench`: latency and throughput of deployment artifacts side by side (parses options and prints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from taslora_cli.app import DEFAULT_WORKDIR_PATH, WorkdirOpt, app, console, fail, handle_errors
from taslora_deploy.artifacts import BENCH_RESULTS, MODEL_ONNX


@app.command("bench")
@handle_errors
def bench_cmd(
    artifacts: Annotated[list[Path] | None, typer.Argument(help=f".onnx files, TensorRT .plan/.engine files, or export folders (standalone PyTorch). Default: the latest export's {MODEL_ONNX} and its folder.")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8,32",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda (onnxruntime provider / torch device).")] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", help="Intra-op threads (default: runtime's choice).")] = None,
    warmup_s: Annotated[float, typer.Option("--warmup-s", help="Warm-up seconds per artifact and batch size.")] = 0.5,
    min_iters: Annotated[int, typer.Option("--min-iters", help="Minimum timed iterations.")] = 50,
    min_time_s: Annotated[float, typer.Option("--min-time-s", help="Minimum timed seconds.")] = 1.0,
    compile_: Annotated[bool, typer.Option("--compile", help="Also time torch.compile for PyTorch artifacts (falls back to eager with a note).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help=f"Write results as JSON here (default: {BENCH_RESULTS} in --out, else in the first artifact's export folder); the plot goes beside it as .png.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help=f"Folder for {BENCH_RESULTS} and bench.png (default: the first artifact's export folder).")] = None,
    compare: Annotated[str | None, typer.Option("--compare", help="Baseline artifact (its label or path): print every other artifact's latency ratio against it per batch size.")] = None,
    paired_iters: Annotated[int | None, typer.Option("--paired-iters", help="With --compare: interleaved A/B pairs per artifact and batch (default: --min-iters; 0: ratio of medians only).")] = None,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs/--no-cuda-graphs", help="On CUDA, also time torch and TensorRT artifacts replayed as CUDA graphs.")] = True,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write bench.png (p50 latency vs batch size, log-log, p10-p90 bars).")] = True,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
) -> None:
    """Latency (mean/p50/p90/p99/min/max) and throughput (images/s, queries/s) of artifacts side by side.

    Artifacts are labelled by their shortest unique path, with kind and precision read from the file. On CUDA,
    host latency and GPU compute time (CUDA events) are both reported, with CUDA graphs off and on.
    """
    from taslora_deploy.bench.report import bench_table, ratio_table
    from taslora_deploy.bench.verb import benchmark

    try:
        sizes = tuple(int(s) for s in batch_sizes.split(",") if s.strip())
    except ValueError:
        raise fail(f"--batch-sizes must be comma-separated integers, not '{batch_sizes}'") from None
    if paired_iters is not None and paired_iters < 0:
        raise fail(f"--paired-iters must be >= 0, not {paired_iters}")
    result = benchmark(artifacts, workdir=workdir, batch_sizes=sizes, device=device, threads=threads,
                       warmup_s=warmup_s, min_iters=min_iters, min_time_s=min_time_s, compile=compile_,
                       json_out=json_out, out=out, compare=compare, paired_iters=paired_iters,
                       cuda_graphs=cuda_graphs, plot=plot, log=console.print)
    console.print(bench_table(result.rows))
    if result.ratios:
        console.print(ratio_table(result.ratios))
    console.print(f"environment: {json.dumps(result.environment)}")
    console.print(f"results: {result.json_path}")
    if result.plot_path is not None:
        console.print(f"plot: {result.plot_path}")
