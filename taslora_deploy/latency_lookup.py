"""Measured latency of subnets on a deployment target, with a lookup cache keyed by subnet (for `search --latency-budget`).

A subnet's latency depends only on its shapes, never on its weight values, so each subnet is materialised from
the bare supernet (`taslora_deploy.standalone.materialize`; the folded experts would change values, not shapes:
that is the zero-overhead claim) and timed at batch 1:

- ``torch-cpu``: the standalone ViT in torch (inference mode) on the CPU;
- ``torch-cuda``: the same on the current CUDA device (synchronised per call);
- ``ort-cpu``: exported with `taslora_deploy.onnx_export.export_onnx` and run by onnxruntime on the CPU;
- ``trt``: the same ONNX file built into a TensorRT engine (batch 1 profile) and run on the current CUDA device.

The value is the median of `iters` timed runs after `warmup` runs (`taslora_deploy.timing`), single-threaded by default (`threads=1`:
stable on a shared machine; multi-threaded batch-1 timings of small models vary by 10x under load). Measurements are noisy, so every value is
cached (and the cache is saved as JSON, keyed by target, host and search space) and reused: a search, its
resume and a later search on the same machine see the same number for the same subnet. A cache that cannot be
used (damaged, truncated, another target's, or edited: it records the sha256 of its table) is ignored with one
warning line naming it and its subnets are measured again (a cache only saves time; refusing it would only
make the user delete it by hand); the next save rewrites it. Under
torch.distributed only rank 0 measures and broadcasts the value, so every rank makes the same decisions.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from taslora_core.artifact_read import ArtifactError, read_json_artifact
from taslora_core.atomic import atomic_write_json
from taslora_core.search.objectives import LATENCY_TARGETS
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_deploy.artifacts import MODEL_ONNX
from taslora_deploy.timing import interleaved_latency, latency_stats, time_calls, torch_threads, warm_up

TARGETS = LATENCY_TARGETS  # the one list of targets (taslora_core.search.objectives)
CACHE_FORMAT = "taslora-latency-cache"


class LatencyUnavailable(ValueError):
    """The requested latency target cannot run here (no CUDA, no onnxruntime, export failure)."""


def _space_hash(space: SearchSpace) -> str:
    return hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


def _table_sha256(table: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def default_cache_path(workdir: str | Path, target: str, space: SearchSpace) -> Path:
    """`<workdir>/latency-cache/<target>-<host>-<space hash>.json`."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in platform.node() or "host")
    return Path(workdir) / "latency-cache" / f"{target}-{host}-{_space_hash(space)}.json"


def check_target(target: str) -> None:
    """Raise LatencyUnavailable (one line, with the fix) when `target` cannot be measured here."""
    if target not in TARGETS:
        raise LatencyUnavailable(f"unknown latency target '{target}'; choose one of {', '.join(TARGETS)}")
    if target == "torch-cuda" and not torch.cuda.is_available():
        raise LatencyUnavailable("--target torch-cuda needs a CUDA device; use --target torch-cpu or ort-cpu here")
    if target == "ort-cpu":
        try:
            importlib.import_module("onnxruntime")
        except ImportError:
            raise LatencyUnavailable("--target ort-cpu needs onnxruntime (pip install 'taslora[cpu]')") from None
    if target == "trt":
        from taslora_deploy.trt_engine import tensorrt_status

        ok, reason = tensorrt_status()
        if not ok:
            raise LatencyUnavailable(f"--target trt needs TensorRT on a CUDA device ({reason.splitlines()[0]}); "
                                     "use --target torch-cuda, torch-cpu or ort-cpu here")


class LatencyTable:
    """Callable subnet -> median latency in ms at batch 1 on `target`, measured once per subnet and cached."""

    def __init__(self, supernet: torch.nn.Module, target: str = "torch-cpu", cache_path: str | Path | None = None,
                 warmup: int = 10, iters: int = 30, threads: int | None = 1, ctx: Any = None) -> None:
        check_target(target)
        self.supernet, self.target = supernet, target
        self.space: SearchSpace = supernet.space  # type: ignore[assignment]
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.warmup, self.iters, self.threads, self.ctx = warmup, iters, threads, ctx
        self.table: dict[str, float] = {}
        self.measured = 0
        if self.cache_path is not None and self.cache_path.exists():
            self.table = self._read_cache(self.cache_path)

    def _read_cache(self, path: Path) -> dict[str, float]:
        """The cached {subnet key: ms} of `path`; {} with a one-line warning when it cannot be trusted."""
        try:
            doc = read_json_artifact(path, "latency cache", "")
            table = doc.get("latency_ms")
            if doc.get("format") != CACHE_FORMAT or doc.get("target") != self.target or not isinstance(table, dict):
                raise ArtifactError(f"latency cache {path} is not a {self.target} latency cache")
            values = {str(k): float(v) for k, v in table.items()}
            if not all(math.isfinite(v) and v > 0 for v in values.values()):
                raise ArtifactError(f"latency cache {path} holds values that are not latencies")
            if doc.get("sha256") not in (None, _table_sha256(table)):
                raise ArtifactError(f"latency cache {path} was modified since it was written (sha256 of its table)")
            return values
        except (ArtifactError, TypeError, ValueError) as err:
            reason = " ".join(str(err).split()).rstrip("; ")
            print(f"warning: {reason}; ignoring it and measuring again (it is rewritten at the end)", file=sys.stderr)
            return {}

    @staticmethod
    def key(subnet: Subnet) -> str:
        """Cache key of a subnet (its AutoFormer candidate tuple as JSON)."""
        return json.dumps(list(subnet.key()))

    def __call__(self, subnet: Subnet) -> float:
        k = self.key(subnet)
        if k not in self.table:
            distributed = self.ctx is not None and getattr(self.ctx, "distributed", False)
            value = self.measure(subnet) if (not distributed or self.ctx.is_main) else None
            if distributed:
                from taslora_core.distributed import broadcast_object

                value = broadcast_object(value, self.ctx)
            self.table[k] = float(value)  # type: ignore[arg-type]
        return self.table[k]

    def save(self) -> None:
        """Write the cache (rank 0 only under torch.distributed)."""
        if self.cache_path is None or (self.ctx is not None and not getattr(self.ctx, "is_main", True)):
            return
        atomic_write_json(self.cache_path, {
            "format": CACHE_FORMAT, "target": self.target, "batch": 1, "host": platform.node(),
            "space": self.space.name, "warmup": self.warmup, "iters": self.iters, "latency_ms": self.table,
            "sha256": _table_sha256(self.table),
        })

    # ------------------------------------------------------------------ measuring
    def measure(self, subnet: Subnet) -> float:
        """Median latency (ms) of one batch-1 forward of the materialised subnet on the target."""
        self.measured += 1
        run, cleanup = self._runner(subnet)
        try:
            with torch_threads(self.threads if self.target == "torch-cpu" else None):
                warm_up([run], min_calls=self.warmup)
                times = time_calls(run, min_iters=self.iters)
            return latency_stats(times, batch=1)["median_ms"]
        finally:
            if cleanup is not None:
                cleanup()

    def compare(self, slower: Subnet, faster: Subnet, warmup_s: float = 0.3, iters: int = 60) -> dict[str, float]:
        """Re-time two subnets interleaved (AB, BA, ...; `timing.interleaved_latency`, the zero-overhead check's
        discipline) to tell a real latency difference from noise; returns the per-pair ratios slower/faster
        (ratio_median, ratio_p10, ratio_p90). Not cached: it is asked only for a few suspicious pairs."""
        run_a, done_a = self._runner(faster)
        run_b, done_b = self._runner(slower)
        try:
            with torch_threads(self.threads if self.target == "torch-cpu" else None):
                stats = interleaved_latency(run_a, run_b, warmup_s=warmup_s, iters=iters)
            return {k: stats[k] for k in ("ratio_median", "ratio_p10", "ratio_p90")}
        finally:
            for done in (done_a, done_b):
                if done is not None:
                    done()

    def _runner(self, subnet: Subnet):
        """(zero-arg batch-1 runner of the materialised subnet on the target, cleanup or None)."""
        from taslora_deploy.standalone import materialize

        model = materialize(self.supernet, subnet).float().cpu().eval()
        shape = (self.space.in_chans, self.space.img_size, self.space.img_size)
        if self.target in ("ort-cpu", "trt"):
            return self._onnx(model, shape)
        from taslora_deploy.runners import torch_runner

        device = "cuda" if self.target == "torch-cuda" else "cpu"
        return torch_runner(model, 1, shape, device=device), None

    def _onnx(self, model: torch.nn.Module, shape: tuple[int, int, int]):
        """A runner of the exported ONNX file: onnxruntime on the CPU, or a TensorRT engine built from it."""
        from taslora_deploy.onnx_export import export_onnx
        from taslora_deploy.runners import ort_runner, trt_runner

        tmp = tempfile.TemporaryDirectory(prefix="taslora-lat-")
        path = Path(tmp.name) / MODEL_ONNX
        try:
            export_onnx(model, path, input_shape=shape)
            if self.target == "trt":
                from taslora_deploy.trt_engine import TrtRunner, build_engine

                plan = build_engine(path, Path(tmp.name) / "model.plan", shape, min_batch=1, opt_batch=1, max_batch=1)
                run = trt_runner(TrtRunner(plan), 1, input_shape=shape)
            else:
                run = ort_runner(path, 1, input_shape=shape, device="cpu", threads=self.threads)
        except Exception as err:  # noqa: BLE001 - reported as one line
            tmp.cleanup()
            raise LatencyUnavailable(f"ONNX export/{'TensorRT' if self.target == 'trt' else 'onnxruntime'} failed "
                                     f"for a candidate: {str(err).splitlines()[0]}") from None
        return run, tmp.cleanup
