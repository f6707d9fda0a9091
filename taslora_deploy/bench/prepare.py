"""An artifact made ready to time: checked first (nothing is printed or timed for a path that cannot be
benchmarked), then turned into a runner factory per batch size for its runtime (onnxruntime for .onnx, TensorRT for
.plan/.engine, torch for a standalone model folder or an nn.Module, with its CUDA-graph twin on CUDA).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from taslora_deploy.artifacts import MODEL_CONFIG, MODEL_WEIGHTS
from taslora_deploy.bench.describe import ONNX_SUFFIXES, TRT_SUFFIXES
from taslora_deploy.runners import ort_runner, torch_runner, trt_graph_runner, trt_runner
from taslora_deploy.standalone import io as model_io
from taslora_deploy.timing import Runner

__all__ = ["Prepared", "check_artifact", "prepare", "dynamo_reset"]


def check_artifact(path: Path) -> None:
    """Raise (one line, with what is expected) unless `path` is something `bench` can time: an existing .onnx,
    .plan/.engine file, or a folder holding a standalone model (model.safetensors + config.json)."""
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist")
    if path.is_dir():
        missing = [n for n in (MODEL_WEIGHTS, MODEL_CONFIG) if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a standalone model directory: missing {', '.join(missing)} "
                f"(expected {MODEL_WEIGHTS} + {MODEL_CONFIG})"
            )
    elif path.suffix.lower() not in (*ONNX_SUFFIXES, *TRT_SUFFIXES):
        raise ValueError(f"unsupported artefact {path}: expected .onnx, .plan/.engine, or a standalone model directory")


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
            dynamo_reset()
    info["eager"] = lambda b: torch_runner(module, b, input_shape, device)
    if torch.device(device).type == "cuda":  # the CUDA-graph twin captures the eager module
        info["graph"] = lambda b: torch_runner(module, b, input_shape, device, cuda_graph=True)
    return runtime, (lambda b: torch_runner(target, b, input_shape, device)), info


def dynamo_reset() -> None:
    """Forget torch.compile's compiled graphs (after a failed compilation)."""
    try:
        torch._dynamo.reset()
    except Exception:
        pass


@dataclass
class Prepared:
    """One artefact ready to run: ``make(batch)`` builds its runner; ``info['graph']`` its CUDA-graph twin."""

    make: Callable[[int], Runner]
    runtime: str
    label: str
    info: dict[str, Any]
    shape: tuple[int, ...]


def prepare(artifact: str | os.PathLike | torch.nn.Module, batch_sizes: Sequence[int], device: str,
            threads: int | None, compile: bool, input_shape: Sequence[int] | None) -> Prepared:
    """The artefact's runner factory, runtime, default label, info and input shape."""
    if isinstance(artifact, torch.nn.Module):
        shape = tuple(input_shape) if input_shape is not None else _module_input_shape(artifact, None)
        if shape is None:
            raise ValueError("input_shape (C, H, W) is required to benchmark an nn.Module without input_shape/img_size")
        runtime, make, info = _torch_runners(artifact, batch_sizes, shape, device, compile)
        return Prepared(make, runtime, type(artifact).__name__, info, shape)

    if not isinstance(artifact, (str, os.PathLike)):
        raise TypeError(f"artifact must be a path or an nn.Module, got {type(artifact).__name__}")
    path = Path(artifact)
    label = str(path)

    check_artifact(path)
    if path.is_dir():
        module = model_io.load_standalone(path)  # looked up at call time, so tests can substitute it
        shape = tuple(input_shape) if input_shape is not None else _module_input_shape(module, path)
        if shape is None:
            raise ValueError(f"cannot tell the input shape of {path}; pass input_shape=(C, H, W)")
        runtime, make, info = _torch_runners(module, batch_sizes, shape, device, compile)
        return Prepared(make, runtime, label, info, shape)

    suffix = path.suffix.lower()

    if suffix in ONNX_SUFFIXES:
        first = ort_runner(path, batch_sizes[0], input_shape, device=device, threads=threads,
                           allow_spinning=True)
        shape = first.input_shape  # type: ignore[attr-defined]
        info = {"provider": first.provider, "dtype": first.dtype}  # type: ignore[attr-defined]
        cache = {batch_sizes[0]: first}

        def make(b: int) -> Runner:
            if b in cache:
                return cache.pop(b)
            return ort_runner(path, b, shape, device=device, threads=threads, allow_spinning=True)

        return Prepared(make, "onnxruntime", label, info, shape)

    # a TensorRT plan (check_artifact allowed nothing else)
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
    info = {"provider": "TensorRT", "dtype": str(runner.input_dtype).replace("torch.", ""),
            "graph": lambda b: trt_graph_runner(runner, b, shape)}

    def make(b: int) -> Runner:
        return trt_runner(runner, b, shape)

    return Prepared(make, "tensorrt", label, info, shape)
