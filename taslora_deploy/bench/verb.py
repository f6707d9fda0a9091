"""Latency benchmark of ONNX (onnxruntime), TensorRT plans and torch modules.

Conventions (trtexec-like): time-based warm-up, then at least ``min_iters``
iterations *and* ``min_time_s`` seconds, timed by :mod:`taslora_deploy.timing`
on the synchronous runners of :mod:`taslora_deploy.runners`.
Reported per artefact and batch: mean/median/p10/p90/p95/p99/min/max/std latency in
ms of the host wall clock, coefficient of variation and throughput in images/s and
queries/s, with the environment. On CUDA, runners that run on a known stream (torch,
TensorRT) also get the GPU compute time from CUDA events, and a second row per batch
replays the inference as a CUDA graph (``cuda_graph: true``; trtexec's default).
Each artifact is checked and turned into runners by :mod:`taslora_deploy.bench.prepare`; the output side
(bench.json rows, tables, ratios) is :mod:`taslora_deploy.bench.report`; labels, kinds and precisions of the
artifacts are :mod:`taslora_deploy.bench.describe`; the environment record is :mod:`taslora_deploy.machine`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from taslora_core.workspace import DEFAULT_WORKDIR, latest
from taslora_deploy.artifacts import BENCH_RESULTS, MODEL_ONNX, REPORT
from taslora_deploy.bench.describe import ArtifactInfo, describe_artifacts
from taslora_deploy.bench.prepare import Prepared, check_artifact, dynamo_reset, prepare
from taslora_deploy.bench.report import attach_ratios, bench_table, compare_ratios, find_baseline, write_json
from taslora_deploy.machine import environment
from taslora_deploy.timing import (Runner, interleaved_latency, latency_stats, time_calls, time_calls_events,
                                   torch_threads, warm_up)

__all__ = ["bench", "bench_table", "write_json", "environment", "latency_stats", "BenchResult", "benchmark",
           "default_output"]

_GPU_KEYS = ("mean_ms", "median_ms", "p10_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "cv")


def _check_sizes(batch_sizes: Iterable[int], min_iters: int) -> list[int]:
    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {sizes}")
    if min_iters < 1:
        raise ValueError("min_iters must be >= 1")
    return sizes


def bench(
    artifact: str | os.PathLike | torch.nn.Module,
    batch_sizes: Iterable[int] = (1, 8, 32),
    warmup_s: float = 0.5,
    min_iters: int = 50,
    min_time_s: float = 1.0,
    device: str = "cpu",
    threads: int | None = None,
    compile: bool = False,
    input_shape: Sequence[int] | None = None,
    name: str | None = None,
    cuda_graphs: bool = True,
) -> list[dict]:
    """Benchmark one artefact at each batch size; returns one result dict per batch (and CUDA-graph variant).

    ``artifact``: ``.onnx`` file (onnxruntime on ``device``; the active provider is
    verified and recorded), ``.plan``/``.engine`` (TensorRT on CUDA; raises
    :class:`~taslora_deploy.trt_engine.TensorRTUnavailable` without TRT+CUDA), a
    directory with ``model.safetensors`` + ``config.json`` (loaded with
    ``load_standalone``), or an ``nn.Module``.  ``input_shape`` (C, H, W) is read
    from the ONNX file / engine; for modules it is taken from the module/config when
    not given.  ``threads`` sets onnxruntime intra-op threads or torch threads (for
    the duration of the call).  ``compile=True`` uses ``torch.compile`` for modules,
    falling back to eager with a ``note`` when compilation fails.  On CUDA, torch and
    TensorRT artefacts get a second row per batch replayed as a CUDA graph
    (``cuda_graph: true``) unless ``cuda_graphs=False``.
    """
    sizes = _check_sizes(batch_sizes, min_iters)
    with torch_threads(threads):
        env = environment(device, threads)
        prep = prepare(artifact, sizes, device, threads, compile, input_shape)
        return _bench_prepared(prep, name or prep.label, {}, sizes, warmup_s, int(min_iters), float(min_time_s),
                               device, threads, env, cuda_graphs)


def _bench_prepared(prep: Prepared, name: str, described: dict[str, Any], sizes: Sequence[int], warmup_s: float,
                    min_iters: int, min_time_s: float, device: str, threads: int | None, env: dict[str, Any],
                    cuda_graphs: bool) -> list[dict]:
    info = prep.info
    results: list[dict] = []
    for b in sizes:
        run = prep.make(b)
        variants: list[tuple[Runner, str, str | None, bool]] = []
        try:
            stats = _measure(run, b, warmup_s, min_iters, min_time_s)
            variants.append((run, prep.runtime, info.get("note"), False))
        except Exception as exc:
            if not info.get("compiled"):
                raise
            # torch.compile can fail on a recompilation for a new batch size: eager for this batch
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            dynamo_reset()
            run = info["eager"](b)
            stats = _measure(run, b, warmup_s, min_iters, min_time_s)
            variants.append((run, "torch", f"torch.compile failed at batch {b}, eager fallback: {msg}", False))
        measured = [stats]
        if cuda_graphs and "graph" in info:
            graph_run = info["graph"](b)
            measured.append(_measure(graph_run, b, warmup_s, min_iters, min_time_s))
            variants.append((graph_run, "torch" if prep.runtime.startswith("torch") else prep.runtime, None, True))
        for (vrun, runtime, note, graph), vstats in zip(variants, measured):
            res: dict[str, Any] = {
                "artifact": name,
                **described,
                "runtime": runtime,
                "provider": info.get("provider"),
                "device": str(device),
                "batch": b,
                "input_shape": list(prep.shape),
                "dtype": getattr(vrun, "dtype", info.get("dtype")),
                "cuda_graph": graph,
                "threads": threads,
                "warmup_s": float(warmup_s),
            }
            res.update(vstats)
            res["note"] = note
            if "compile_error" in info:
                res["compile_error"] = info["compile_error"]
            res["environment"] = env
            results.append(res)
    return results


def _measure(run: Runner, batch: int, warmup_s: float, min_iters: int, min_time_s: float) -> dict[str, Any]:
    """trtexec-like: time-based warm-up (at least one call), then >= min_iters calls and >= min_time_s.

    Host wall-clock statistics; with ``gpu_compute`` from CUDA events when the runner names its stream.
    """
    warm_up([run], seconds=warmup_s)
    stream = getattr(run, "stream", None)
    if stream is None:
        return {**latency_stats(time_calls(run, min_iters, min_time_s), batch), "gpu_compute": None}
    host, gpu = time_calls_events(run, stream, min_iters, min_time_s)
    gpu_stats = latency_stats(gpu, batch)
    return {**latency_stats(host, batch), "gpu_compute": {k: gpu_stats[k] for k in _GPU_KEYS}}


# --------------------------------------------------------------------------- `taslora bench`


@dataclass
class BenchResult:
    """Outcome of :func:`benchmark`: one row per artifact, batch size and variant (the JSON's entries)."""

    rows: list[dict]
    environment: dict[str, Any]
    json_path: Path
    artifacts: list[ArtifactInfo] = field(default_factory=list)
    ratios: list[dict] = field(default_factory=list)  # compare_ratios against the --compare baseline
    plot_path: Path | None = None


def default_output(first: Path, out: str | os.PathLike | None = None) -> Path:
    """Where bench.json goes: in ``out`` when given, else in the export folder of the first artifact.

    The export folder is the artifact's folder (or the folder itself, for a standalone model), or the one
    above it when that one holds the export's report.json (``baseline/model.onnx``).
    """
    if out is not None:
        return Path(out) / BENCH_RESULTS
    here = first if first.is_dir() else first.parent
    return next((d for d in (here, here.parent) if (d / REPORT).is_file()), here) / BENCH_RESULTS


def _artifact_paths(artifacts: Sequence[str | os.PathLike] | None, workdir: str | os.PathLike,
                    compare: str | os.PathLike | None) -> list[Path]:
    if artifacts:
        paths = [Path(a) for a in artifacts]
    else:
        exp = latest(workdir, "exports", "run `taslora export --onnx` first or name the artifacts")
        paths = [p for p in (exp / MODEL_ONNX, exp) if p.exists()]
    for path in paths:
        check_artifact(path)  # before anything is printed or timed
    if compare is not None and Path(compare).exists() and not any(
            os.path.abspath(p) == os.path.abspath(compare) for p in paths):
        paths.insert(0, Path(compare))  # a baseline path not listed is benchmarked too, first
    return paths


def _paired_ratios(prepared: dict[str, Prepared], baseline: str, sizes: Sequence[int], warmup_s: float,
                   iters: int, cuda_graphs: bool, log: Callable[[str], None]) -> dict[tuple[str, bool, int], dict]:
    """Interleaved A/B runs (A = baseline) of every other series at each batch size."""
    out: dict[tuple[str, bool, int], dict] = {}
    for b in sizes:
        base_run = prepared[baseline].make(b)
        for label, prep in prepared.items():
            makers = [(False, prep.make)] if label != baseline else []
            if cuda_graphs and "graph" in prep.info:
                makers.append((True, prep.info["graph"]))
            for graph, make in makers:
                try:
                    out[(label, graph, b)] = interleaved_latency(base_run, make(b), warmup_s=warmup_s, iters=iters)
                except Exception as exc:  # e.g. a torch.compile recompilation: the independent ratio still stands
                    log(f"paired run of {label} at batch {b} failed, ratio of medians only: {type(exc).__name__}: {exc}")
    return out


def benchmark(
    artifacts: Sequence[str | os.PathLike] | None = None,
    *,
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    batch_sizes: Iterable[int] = (1, 8, 32),
    device: str = "cpu",
    threads: int | None = None,
    warmup_s: float = 0.5,
    min_iters: int = 50,
    min_time_s: float = 1.0,
    compile: bool = False,
    json_out: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    compare: str | os.PathLike | None = None,
    paired_iters: int | None = None,
    cuda_graphs: bool = True,
    plot: bool = True,
    log: Callable[[str], None] = print,
) -> BenchResult:
    """Benchmark artifacts side by side; write the rows as bench.json and the latency curves as bench.png.

    ``artifacts`` default to the latest export's ``model.onnx`` and its folder (standalone PyTorch); each is
    labelled by its shortest unique path suffix, with kind and precision read from the file. ``compare``
    names the baseline (a label or a path; a path not listed is benchmarked too): every other series gets
    the ratio of its median to the baseline's per batch size and, unless ``paired_iters`` is 0, an
    interleaved A/B measurement of ``paired_iters`` pairs (default ``min_iters``). The JSON goes to
    ``json_out``, else ``bench.json`` in ``out``, else in the first artifact's export folder; the PNG beside
    it with the suffix ``.png``. Raises FileNotFoundError for a missing artifact before timing anything.
    """
    paths = _artifact_paths(artifacts, workdir, compare)
    user_first = Path(artifacts[0]) if artifacts else paths[0]
    infos = describe_artifacts(paths)
    baseline = find_baseline(compare, infos) if compare is not None else None
    sizes = _check_sizes(batch_sizes, min_iters)
    rows: list[dict] = []
    prepared: dict[str, Prepared] = {}
    with torch_threads(threads):
        env = environment(device, threads)
        for path, info in zip(paths, infos):
            log(f"benchmarking {info.label} ({info.kind}, {info.precision})")
            prep = prepared[info.label] = prepare(path, sizes, device, threads, compile, None)
            described = {k: v for k, v in info.to_dict().items() if k != "label"}
            rows += _bench_prepared(prep, info.label, described, sizes, warmup_s, int(min_iters), float(min_time_s),
                                    device, threads, env, cuda_graphs)
        ratios: list[dict] = []
        if baseline is not None:
            iters = int(min_iters if paired_iters is None else paired_iters)
            paired = _paired_ratios(prepared, baseline.label, sizes, warmup_s, iters, cuda_graphs, log) if iters > 0 else {}
            ratios = compare_ratios(rows, baseline.label, paired)
            attach_ratios(rows, ratios)
    target = Path(json_out) if json_out is not None else default_output(user_first, out)
    write_json(rows, target)
    plot_path = None
    if plot:
        from taslora_core.plots import plot_bench

        plot_path = plot_bench(rows, target.with_suffix(".png"), title=f"latency vs batch size ({env['device_name']})")
    return BenchResult(rows, env, target, infos, ratios, plot_path)
