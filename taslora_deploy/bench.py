"""Latency benchmark of ONNX (onnxruntime), TensorRT plans and torch modules.

Conventions (trtexec-like): time-based warm-up, then at least ``min_iters``
iterations *and* ``min_time_s`` seconds, timed by :mod:`taslora_deploy.timing`
on the synchronous runners of :mod:`taslora_deploy.runners`.
Reported per artefact and batch: mean/median/p90/p95/p99/min/max/std latency in
ms, coefficient of variation and throughput in images/s, with the environment.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from taslora_core.atomic import atomic_write_text, json_default
from taslora_core.workspace import DEFAULT_WORKDIR, latest
from taslora_deploy import standalone_io
from taslora_deploy.artifacts import BENCH_RESULTS, MODEL_CONFIG, MODEL_ONNX, MODEL_WEIGHTS
from taslora_deploy.runners import ort_runner, torch_runner, trt_runner
from taslora_deploy.timing import Runner, latency_stats, time_calls, torch_threads, warm_up

__all__ = ["bench", "bench_table", "write_json", "environment", "latency_stats", "BenchResult", "benchmark"]

ONNX_SUFFIXES = {".onnx"}
TRT_SUFFIXES = {".plan", ".engine"}


# --------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def environment(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Versions and hardware facts to store next to benchmark numbers (JSON-serialisable)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda" and torch.cuda.is_available()
    if cuda:
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        device_name = torch.cuda.get_device_name(idx)
        capability = f"{props.major}.{props.minor}"
    else:
        device_name, capability = _cpu_model(), None
    trt_version = None
    if util.find_spec("tensorrt") is not None:  # do not import it just for the version
        trt_version = _dist_version("tensorrt", "tensorrt-cu13", "tensorrt_cu13", "tensorrt-cu12", "tensorrt_cu12")
    ort_version = _dist_version("onnxruntime", "onnxruntime-gpu")
    return {
        "device": str(device),
        "device_name": device_name,
        "compute_capability": capability,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "onnx": _dist_version("onnx"),
        "onnxruntime": ort_version,
        "tensorrt": trt_version,
        "numpy": np.__version__,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------- artefacts


def _load_standalone_dir(directory: Path) -> torch.nn.Module:
    missing = [n for n in (MODEL_WEIGHTS, MODEL_CONFIG) if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} is not a standalone model directory: missing {', '.join(missing)} "
            f"(expected {MODEL_WEIGHTS} + {MODEL_CONFIG})"
        )
    return standalone_io.load_standalone(directory)  # looked up at call time, so tests can substitute it


def _module_input_shape(module: torch.nn.Module, directory: Path | None) -> tuple[int, ...] | None:
    for attr in ("input_shape", "image_shape"):
        val = getattr(module, attr, None)
        if isinstance(val, (tuple, list)) and len(val) == 3:
            return tuple(int(v) for v in val)
    cfgs: list[dict] = []
    cfg_obj = getattr(module, "config", None)
    if isinstance(cfg_obj, dict):
        cfgs.append(cfg_obj)
    elif cfg_obj is not None and hasattr(cfg_obj, "__dict__"):
        cfgs.append(vars(cfg_obj))
    if directory is not None:
        try:
            cfgs.append(json.loads((directory / MODEL_CONFIG).read_text()))
        except (OSError, ValueError):
            pass
    cfgs.append(vars(module))
    for cfg in cfgs:
        val = cfg.get("input_shape")
        if isinstance(val, (list, tuple)) and len(val) == 3:
            return tuple(int(v) for v in val)
        size = next((cfg[k] for k in ("img_size", "image_size", "input_size") if k in cfg), None)
        chans = next((cfg[k] for k in ("in_chans", "in_channels", "num_channels") if k in cfg), None)
        if isinstance(size, (list, tuple)) and len(size) == 3:
            return tuple(int(v) for v in size)
        if size is not None and chans is not None:
            hw = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)
            return (int(chans), *hw)
    return None


def _torch_runners(
    module: torch.nn.Module,
    batch_sizes: Sequence[int],
    input_shape: Sequence[int],
    device: str,
    compile: bool,
) -> tuple[str, Callable[[int], Callable[[], Any]], dict]:
    info: dict[str, Any] = {"provider": str(torch.device(device)), "note": None, "compiled": False}
    target = module.eval().to(torch.device(device))
    runtime = "torch"
    if compile:
        try:
            compiled = torch.compile(target)
            probe = torch_runner(compiled, batch_sizes[0], input_shape, device)
            probe()  # compilation happens on the first call
            target = compiled
            runtime = "torch.compile"
            info["compiled"] = True
        except Exception as exc:  # inductor needs a C++ toolchain; many failure types
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            info["note"] = f"torch.compile failed, eager fallback: {msg}"
            info["compile_error"] = msg
            _dynamo_reset()
    info["eager"] = lambda b: torch_runner(module, b, input_shape, device)
    return runtime, (lambda b: torch_runner(target, b, input_shape, device)), info


def _dynamo_reset() -> None:
    try:
        torch._dynamo.reset()
    except Exception:
        pass


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
) -> list[dict]:
    """Benchmark one artefact at each batch size; returns one result dict per batch.

    ``artifact``: ``.onnx`` file (onnxruntime on ``device``; the active provider is
    verified and recorded), ``.plan``/``.engine`` (TensorRT on CUDA; raises
    :class:`~taslora_deploy.trt_engine.TensorRTUnavailable` without TRT+CUDA), a
    directory with ``model.safetensors`` + ``config.json`` (loaded with
    ``load_standalone``), or an ``nn.Module``.  ``input_shape`` (C, H, W) is read
    from the ONNX file / engine; for modules it is taken from the module/config when
    not given.  ``threads`` sets onnxruntime intra-op threads or torch threads (for
    the duration of the call).  ``compile=True`` uses ``torch.compile`` for modules,
    falling back to eager with a ``note`` when compilation fails.
    """
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_sizes}")
    if min_iters < 1:
        raise ValueError("min_iters must be >= 1")

    with torch_threads(threads):
        env = environment(device, threads)
        make_runner, runtime, label, info, shape = _prepare(artifact, batch_sizes, device, threads, compile,
                                                            input_shape)
        results: list[dict] = []
        for b in batch_sizes:
            run = make_runner(b)
            batch_runtime, batch_note = runtime, info.get("note")
            try:
                times = _measure(run, warmup_s, int(min_iters), float(min_time_s))
            except Exception as exc:
                if not info.get("compiled"):
                    raise
                # torch.compile can fail on a recompilation for a new batch size: eager for this batch
                msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
                batch_runtime, batch_note = "torch", f"torch.compile failed at batch {b}, eager fallback: {msg}"
                _dynamo_reset()
                run = info["eager"](b)
                times = _measure(run, warmup_s, int(min_iters), float(min_time_s))
            res: dict[str, Any] = {
                "artifact": name or label,
                "runtime": batch_runtime,
                "provider": info.get("provider"),
                "device": str(device),
                "batch": b,
                "input_shape": list(shape),
                "dtype": getattr(run, "dtype", info.get("dtype")),
                "threads": threads,
                "warmup_s": float(warmup_s),
            }
            res.update(latency_stats(times, b))
            res["note"] = batch_note
            if "compile_error" in info:
                res["compile_error"] = info["compile_error"]
            res["environment"] = env
            results.append(res)
        return results


def _measure(run: Runner, warmup_s: float, min_iters: int, min_time_s: float) -> np.ndarray:
    """trtexec-like: time-based warm-up (at least one call), then >= min_iters calls and >= min_time_s."""
    warm_up([run], seconds=warmup_s)
    return time_calls(run, min_iters, min_time_s)


def _prepare(artifact, batch_sizes, device, threads, compile, input_shape):
    """-> (make_runner(batch), runtime, label, info, input_shape)."""
    if isinstance(artifact, torch.nn.Module):
        shape = tuple(input_shape) if input_shape is not None else _module_input_shape(artifact, None)
        if shape is None:
            raise ValueError("input_shape (C, H, W) is required to benchmark an nn.Module without input_shape/img_size")
        runtime, make, info = _torch_runners(artifact, batch_sizes, shape, device, compile)
        return make, runtime, type(artifact).__name__, info, shape

    if not isinstance(artifact, (str, os.PathLike)):
        raise TypeError(f"artifact must be a path or an nn.Module, got {type(artifact).__name__}")
    path = Path(artifact)
    label = str(path)

    if path.is_dir():
        module = _load_standalone_dir(path)
        shape = tuple(input_shape) if input_shape is not None else _module_input_shape(module, path)
        if shape is None:
            raise ValueError(f"cannot tell the input shape of {path}; pass input_shape=(C, H, W)")
        runtime, make, info = _torch_runners(module, batch_sizes, shape, device, compile)
        return make, runtime, label, info, shape

    if not path.exists():
        raise FileNotFoundError(path)
    suffix = path.suffix.lower()

    if suffix in ONNX_SUFFIXES:
        first = ort_runner(path, batch_sizes[0], input_shape, device=device, threads=threads,
                           allow_spinning=True)
        shape = first.input_shape  # type: ignore[attr-defined]
        info = {"provider": first.provider, "dtype": first.dtype}  # type: ignore[attr-defined]
        cache = {batch_sizes[0]: first}

        def make(b):
            if b in cache:
                return cache.pop(b)
            return ort_runner(path, b, shape, device=device, threads=threads, allow_spinning=True)

        return make, "onnxruntime", label, info, shape

    if suffix in TRT_SUFFIXES:
        from taslora_deploy.trt_engine import TrtRunner, require_tensorrt

        require_tensorrt()
        if torch.device(device).type != "cuda":
            raise ValueError(f"TensorRT engines run on CUDA; got device={device!r}")
        runner = TrtRunner(path, device=device)
        shape = tuple(input_shape) if input_shape is not None else runner.input_shape
        lo, _, hi = runner.batch_range
        bad = [b for b in batch_sizes if not lo <= b <= hi]
        if bad:
            raise ValueError(f"batch sizes {bad} are outside the engine profile range [{lo}, {hi}]")
        info = {"provider": "TensorRT", "dtype": str(runner.input_dtype).replace("torch.", "")}

        def make(b):
            return trt_runner(runner, b, shape)

        return make, "tensorrt", label, info, shape

    raise ValueError(f"unsupported artefact {path}: expected .onnx, .plan/.engine, or a standalone model directory")


# --------------------------------------------------------------------------- output


def bench_table(results: Sequence[dict], title: str = "Latency benchmark"):
    """A rich Table with artefacts side by side per batch size.

    Rows are grouped by batch; ``vs first`` is the median latency relative to the
    first artefact (in input order) benchmarked at that batch size.
    """
    from rich.table import Table

    table = Table(title=title)
    for col, kw in (
        ("batch", {"justify": "right"}),
        ("artifact", {}),
        ("runtime", {}),
        ("provider", {}),
        ("mean ms", {"justify": "right"}),
        ("p50 ms", {"justify": "right"}),
        ("p90 ms", {"justify": "right"}),
        ("p99 ms", {"justify": "right"}),
        ("std ms", {"justify": "right"}),
        ("img/s", {"justify": "right"}),
        ("vs first", {"justify": "right"}),
    ):
        table.add_column(col, **kw)
    order = {id(r): i for i, r in enumerate(results)}
    rows = sorted(results, key=lambda r: (r["batch"], order[id(r)]))
    first_p50: dict[int, float] = {}
    for r in rows:
        ref = first_p50.setdefault(r["batch"], r["median_ms"])
        rel = f"{r['median_ms'] / ref:.3f}x" if ref > 0 else "-"
        table.add_row(
            str(r["batch"]),
            str(r["artifact"]),
            str(r["runtime"]),
            str(r.get("provider") or ""),
            f"{r['mean_ms']:.3f}",
            f"{r['median_ms']:.3f}",
            f"{r['p90_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['std_ms']:.3f}",
            f"{r['throughput_ips']:.1f}",
            rel,
        )
    return table


def _json_default(obj: Any):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (torch.device, torch.dtype)):
        return str(obj)
    return json_default(obj)


def write_json(results: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write ``results`` (a list of dicts) as JSON, atomically (``taslora_core.atomic``)."""
    text = json.dumps(list(results), indent=2, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------- `taslora bench`


@dataclass
class BenchResult:
    """Outcome of :func:`benchmark`: one row per artifact and batch size (the JSON's entries)."""

    rows: list[dict]
    environment: dict[str, Any]
    json_path: Path


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
    log: Callable[[str], None] = print,
) -> BenchResult:
    """Benchmark artifacts side by side and write the rows as JSON.

    ``artifacts`` default to the latest export's ``model.onnx`` and its folder (standalone PyTorch). The JSON
    goes to ``json_out``, else ``bench.json`` beside the first artifact. Raises FileNotFoundError for a
    missing artifact before timing anything.
    """
    if artifacts:
        paths = [Path(a) for a in artifacts]
    else:
        exp = latest(workdir, "exports", "run `taslora export --onnx` first or name the artifacts")
        paths = [p for p in (exp / MODEL_ONNX, exp) if p.exists()]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
    sizes = tuple(batch_sizes)
    rows: list[dict] = []
    for path in paths:
        log(f"benchmarking {path}")
        label = f"{path.name}/ (torch)" if path.is_dir() else path.name
        rows += bench(path, name=label, batch_sizes=sizes, warmup_s=warmup_s, min_iters=min_iters,
                      min_time_s=min_time_s, device=device, threads=threads, compile=compile)
    target = Path(json_out) if json_out is not None else (paths[0] if paths[0].is_dir() else paths[0].parent) / BENCH_RESULTS
    write_json(rows, target)
    return BenchResult(rows, environment(device, threads), target)
