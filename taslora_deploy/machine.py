"""Facts about this machine: installed package versions, the CPU model, and the environment record stored next to
every benchmark number (`bench.json`'s ``environment``). `taslora doctor` reads the same facts."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata, util
from typing import Any

import numpy as np
import torch

__all__ = ["cpu_model", "dist_version", "environment"]

TENSORRT_DISTS = ("tensorrt", "tensorrt-cu13", "tensorrt_cu13", "tensorrt-cu12", "tensorrt_cu12")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dist_version(*names: str) -> str | None:
    """The installed version of the first of these distributions that is installed, else None (imports nothing)."""
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
        device_name, capability = cpu_model(), None
    trt_version = None
    if util.find_spec("tensorrt") is not None:  # do not import it just for the version
        trt_version = dist_version(*TENSORRT_DISTS)
    return {
        "device": str(device),
        "device_name": device_name,
        "compute_capability": capability,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "onnx": dist_version("onnx"),
        "onnxruntime": dist_version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": trt_version,
        "numpy": np.__version__,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
