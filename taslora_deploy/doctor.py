"""`taslora doctor`: what this machine can run, what is missing, and the fix for each.

Every check reuses the code the commands themselves run, so the doctor cannot disagree with them: onnxruntime
through `ort_parity.require_onnxruntime`, TensorRT through `trt_engine.tensorrt_status`, the data through
`data.load_fmnist` (the files are read and checked), the workspace through `workspace.runs`, the latency targets
through `latency_lookup.check_target`, installed versions through `machine.dist_version`.

A check's status is ``ok``, ``missing`` (an optional part: CUDA, TensorRT, ...), ``fail`` (the default path —
the quickstart on Fashion-MNIST with its ONNX export on onnxruntime's CPU provider — cannot run) or ``info``.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import util
from pathlib import Path

import torch

from taslora_core.data import DataUnavailable, fmnist_root, load_fmnist
from taslora_core.search.objectives import LATENCY_TARGETS
from taslora_core.workspace import DEFAULT_WORKDIR, KINDS, runs
from taslora_deploy import trt_engine
from taslora_deploy.errors import OnnxRuntimeMissing
from taslora_deploy.latency_lookup import LatencyUnavailable, check_target
from taslora_deploy.machine import TENSORRT_DISTS, dist_version
from taslora_deploy.ort_parity import ONNXRUNTIME_INSTALL, require_onnxruntime

__all__ = ["Check", "Diagnosis", "diagnose", "DEFAULT_PATH_MODULES"]

MIN_PYTHON = (3, 11)
# what the default path imports (pyproject.toml's dependencies), by import name
DEFAULT_PATH_MODULES = ("torch", "timm", "onnx", "onnxscript", "typer", "rich", "safetensors", "yaml", "numpy",
                        "matplotlib")
REINSTALL = "pip install -e . (or `bash scripts/run.sh setup` in a clone)"
ORT_BOTH_FIX = ("pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'taslora[cpu]' "
                "(or 'taslora[gpu]' on a CUDA machine): never both")
TRT_FIX = ("on a CUDA machine: pip install 'taslora[gpu,trt]' --extra-index-url https://pypi.nvidia.com "
           "(TensorRT's libraries come from NVIDIA's index)")


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: str  # ok | missing | fail | info
    detail: str
    fix: str = ""


@dataclass
class Diagnosis:
    """Every check, in report order; `ok` is False when the default path cannot run here."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (missing optional parts do not count)."""
        return not any(c.status == "fail" for c in self.checks)

    def by_name(self, name: str) -> Check:
        """The check called `name` (tests and callers)."""
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        """What `taslora doctor --json` prints: ``{"ok": bool, "checks": [{name, status, detail, fix}, ...]}``."""
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def _python() -> list[Check]:
    version = platform.python_version()
    if sys.version_info[:2] < MIN_PYTHON:
        return [Check("python", "fail", f"Python {version} at {sys.executable}",
                      f"use Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}")]
    missing = [m for m in DEFAULT_PATH_MODULES if util.find_spec(m) is None]
    if missing:
        return [Check("python", "fail", f"Python {version}; not importable: {', '.join(missing)}", REINSTALL)]
    return [Check("python", "ok", f"Python {version} at {sys.executable}; {', '.join(DEFAULT_PATH_MODULES)} import")]


def _torch() -> list[Check]:
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    head = f"torch {torch.__version__} ({build}), {torch.get_num_threads()} CPU threads"
    if not torch.cuda.is_available():
        fix = ("a CUDA build of torch and an NVIDIA driver" if torch.version.cuda is None
               else "no GPU visible: check the NVIDIA driver and CUDA_VISIBLE_DEVICES")
        return [Check("torch", "ok", head), Check("CUDA devices", "missing", "none: everything runs on the CPU",
                                                  f"optional; for GPU training, search and latency: {fix}")]
    devices = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        devices.append(f"cuda:{i} {torch.cuda.get_device_name(i)} (sm {major}.{minor})")
    return [Check("torch", "ok", head), Check("CUDA devices", "ok", "; ".join(devices))]


def _onnxruntime() -> list[Check]:
    cpu_wheel, gpu_wheel = dist_version("onnxruntime"), dist_version("onnxruntime-gpu")
    if cpu_wheel and gpu_wheel:
        return [Check("onnxruntime", "fail", f"both onnxruntime {cpu_wheel} and onnxruntime-gpu {gpu_wheel} are "
                      "installed: they share the import name onnxruntime and one silently replaces the other's files",
                      ORT_BOTH_FIX)]
    try:
        ort = require_onnxruntime()
    except OnnxRuntimeMissing:
        return [Check("onnxruntime", "fail", "not installed: the ONNX export, parity and bench steps cannot run",
                      f"{ONNXRUNTIME_INSTALL} (or 'taslora[gpu]' on a CUDA machine, never both)")]
    providers = list(ort.get_available_providers())
    wheel = "onnxruntime-gpu" if gpu_wheel else "onnxruntime"
    out = [Check("onnxruntime", "ok", f"{wheel} {getattr(ort, '__version__', '?')}: {', '.join(providers)}")]
    if torch.cuda.is_available() and "CUDAExecutionProvider" not in providers:
        out.append(Check("onnxruntime on CUDA", "missing", "no CUDAExecutionProvider: ONNX runs on the CPU only",
                         "optional; pip uninstall -y onnxruntime, then pip install 'taslora[gpu]'"))
    return out


def _tensorrt() -> list[Check]:
    ok, reason = trt_engine.tensorrt_status()
    out = [Check("TensorRT", "ok", reason) if ok
           else Check("TensorRT", "missing", reason.split(": pip install")[0], f"optional; {TRT_FIX}")]
    poly = dist_version("polygraphy")
    if poly:
        out.append(Check("Polygraphy", "ok", f"polygraphy {poly} (for debugging engines; taslora does not need it)"))
    elif ok or any(dist_version(d) for d in TENSORRT_DISTS):
        out.append(Check("Polygraphy", "missing", "not installed (the trt extra's engine-debugging tool)",
                         "optional; pip install polygraphy --extra-index-url https://pypi.nvidia.com"))
    return out


def _data() -> list[Check]:
    root = fmnist_root()
    try:
        train, test = len(load_fmnist("train")[1]), len(load_fmnist("test")[1])
    except DataUnavailable as err:
        detail, _, fix = str(err).partition("; fix: ")
        return [Check("Fashion-MNIST", "fail", detail, fix or "reinstall: apt-get install --reinstall dataset-fashion-mnist")]
    return [Check("Fashion-MNIST", "ok", f"{train} train + {test} test images in {root}")]


def _workspace(workdir: Path) -> list[Check]:
    if not workdir.is_dir():
        return [Check("workspace", "info", f"{workdir}: none yet", "taslora quickstart makes one")]
    parts = []
    for kind in KINDS:
        found = runs(workdir, kind)
        parts.append(f"{kind} {len(found)}" + (f" (latest {found[-1].name})" if found else ""))
    return [Check("workspace", "info", f"{workdir}: " + "; ".join(parts))]


def _latency_targets() -> list[Check]:
    usable, not_here = [], []
    for target in LATENCY_TARGETS:
        try:
            check_target(target)
            usable.append(target)
        except LatencyUnavailable as err:  # "--target X needs Y (why); use ..." -> "X (needs Y)"
            why = str(err).split(";")[0].split(" (")[0].removeprefix(f"--target {target} ")
            not_here.append(f"{target} ({why})")
    detail = f"usable here: {', '.join(usable) or 'none'}" + (f"; not here: {', '.join(not_here)}" if not_here else "")
    return [Check("latency targets", "ok" if usable else "missing", detail,
                  "see the CUDA devices / TensorRT rows" if not_here else "")]


def diagnose(workdir: str | Path = DEFAULT_WORKDIR) -> Diagnosis:
    """Run every check (nothing is written; the data files are read and checked)."""
    checks = [*_python(), *_torch(), *_onnxruntime(), *_tensorrt(), *_data(), *_workspace(Path(workdir)),
              *_latency_targets()]
    return Diagnosis(checks)
