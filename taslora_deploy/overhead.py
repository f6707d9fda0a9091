"""Zero-overhead checks: structural comparison of two ONNX files, the latency verdict, and `check-overhead`.

Typical use: A = plain ViT of an architecture, B = the same architecture after
folding the TAS-LoRA experts into its weights.  Structurally they must be identical
(same ops, same parameter shapes/counts, same FLOPs), and their latency ratio B/A
must be ~1. The timing itself is :mod:`taslora_deploy.timing` (``interleaved_latency``) on the runners of
:mod:`taslora_deploy.runners`; both are re-exported here for existing callers.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from taslora_core.artifact_read import read_json_artifact
from taslora_core.atomic import atomic_write_json
from taslora_core.workspace import DEFAULT_WORKDIR, latest
from taslora_deploy.artifacts import BASELINE_ONNX, MODEL_CONFIG, MODEL_ONNX, OVERHEAD_REPORT, baseline_onnx
from taslora_deploy.onnx_graph import (
    initializer_param_count,
    io_signature,
    op_histogram,
    referenced_param_count,
    referenced_param_shapes,
)
from taslora_deploy.runners import ort_runner, torch_runner
from taslora_deploy.timing import interleaved_latency

__all__ = [
    "OverheadError",
    "structural_compare",
    "assert_same_structure",
    "interleaved_latency",
    "within_tolerance",
    "ort_runner",
    "torch_runner",
    "OverheadCheck",
    "check_overhead",
]

FlopsArg = float | int | Callable[[Path], float] | None


class OverheadError(AssertionError):
    """Two artefacts that should be structurally identical are not."""


# --------------------------------------------------------------------------- structure


def _resolve_flops(flops: FlopsArg, path: Path) -> float | None:
    if flops is None:
        return None
    if callable(flops):
        return float(flops(path))
    return float(flops)


def structural_compare(
    onnx_a: str | os.PathLike,
    onnx_b: str | os.PathLike,
    flops_a: FlopsArg = None,
    flops_b: FlopsArg = None,
) -> dict:
    """Compare two ONNX files structurally.

    Compared: op-type histograms, graph I/O signatures (names, dtypes, shapes),
    floating-point parameter shapes per use and their element count
    (:func:`referenced_param_count`, insensitive to the exporter merging
    initializers that happen to hold identical values), and FLOPs when given
    (a number for each model, or a callable ``path -> flops``; compared exactly).
    The stored initializer element counts are reported too; a difference there
    alone is listed under ``notes`` (it only reflects deduplicated initializers).

    Returns ``{"a", "b", "op_histogram_a", "op_histogram_b", "params_a",
    "params_b", "stored_params_a", "stored_params_b", "flops_a", "flops_b",
    "equal", "differences", "notes"}``.
    """
    pa, pb = Path(onnx_a), Path(onnx_b)
    hist_a, hist_b = op_histogram(pa), op_histogram(pb)
    params_a, params_b = referenced_param_count(pa), referenced_param_count(pb)
    stored_a, stored_b = initializer_param_count(pa), initializer_param_count(pb)
    fa, fb = _resolve_flops(flops_a, pa), _resolve_flops(flops_b, pb)
    if (fa is None) != (fb is None):
        raise ValueError("pass FLOPs for both models or for neither")

    differences: list[str] = []
    notes: list[str] = []
    for op in sorted(set(hist_a) | set(hist_b)):
        ca, cb = hist_a.get(op, 0), hist_b.get(op, 0)
        if ca != cb:
            differences.append(f"op {op}: {ca} in A vs {cb} in B")
    if params_a != params_b:
        differences.append(f"parameter count: {params_a} in A vs {params_b} in B")
    shapes_a, shapes_b = Counter(referenced_param_shapes(pa)), Counter(referenced_param_shapes(pb))
    if shapes_a != shapes_b:
        only_a = sorted((shapes_a - shapes_b).elements())
        only_b = sorted((shapes_b - shapes_a).elements())
        differences.append(f"parameter shapes: only in A {only_a[:8]}, only in B {only_b[:8]}")
    io_a, io_b = io_signature(pa), io_signature(pb)
    if io_a != io_b:
        differences.append(f"graph I/O: A {io_a} vs B {io_b}")
    if fa is not None and fa != fb:
        differences.append(f"FLOPs: {fa:g} in A vs {fb:g} in B")
    if stored_a != stored_b and params_a == params_b:
        notes.append(
            f"stored initializer elements differ ({stored_a} vs {stored_b}) only because the exporter merged "
            "initializers with identical values"
        )

    return {
        "a": str(pa),
        "b": str(pb),
        "op_histogram_a": hist_a,
        "op_histogram_b": hist_b,
        "params_a": params_a,
        "params_b": params_b,
        "stored_params_a": stored_a,
        "stored_params_b": stored_b,
        "flops_a": fa,
        "flops_b": fb,
        "equal": not differences,
        "differences": differences,
        "notes": notes,
    }


def assert_same_structure(
    onnx_a: str | os.PathLike,
    onnx_b: str | os.PathLike,
    flops_a: FlopsArg = None,
    flops_b: FlopsArg = None,
) -> dict:
    """:func:`structural_compare`, raising :class:`OverheadError` listing every difference."""
    report = structural_compare(onnx_a, onnx_b, flops_a=flops_a, flops_b=flops_b)
    if not report["equal"]:
        raise OverheadError(
            f"{report['a']} and {report['b']} differ structurally:\n  " + "\n  ".join(report["differences"])
        )
    return report


# --------------------------------------------------------------------------- latency verdict


def within_tolerance(report: dict, tol: float = 0.03, two_sided: bool = False) -> bool:
    """True when B is at most ``tol`` slower than A (median pair ratio ``<= 1 + tol``).

    With ``two_sided=True`` B must also not be more than ``tol`` faster.
    """
    r = float(report["ratio_median"])
    if not math.isfinite(r) or r <= 0:
        return False
    if two_sided:
        return abs(r - 1.0) <= tol
    return r <= 1.0 + tol


# --------------------------------------------------------------------------- `taslora check-overhead`


@dataclass
class OverheadCheck:
    """Outcome of :func:`check_overhead` (also written to ``overhead.json`` in the export folder)."""

    export_dir: Path
    structure: dict[str, Any]
    latency: dict[str, Any]
    report_path: Path

    @property
    def same_structure(self) -> bool:
        """Same ops, parameter shapes/counts, I/O and FLOPs as the no-LoRA baseline."""
        return bool(self.structure.get("equal"))

    @property
    def latency_ok(self) -> bool:
        """Median folded/baseline pair ratio within the tolerance (both ways)."""
        return bool(self.latency.get("within_tolerance"))

    @property
    def ok(self) -> bool:
        """Both verdicts hold."""
        return self.same_structure and self.latency_ok


def check_overhead(
    export_dir: str | os.PathLike | None = None,
    *,
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    batch: int = 8,
    iters: int = 500,
    tolerance: float = 0.03,
    device: str = "cpu",
    threads: int | None = None,
    warmup_s: float = 1.0,
) -> OverheadCheck:
    """Zero-overhead check of an export folder (default: the workspace's latest export) against its baseline.

    A = ``baseline/model.onnx`` (no LoRA), B = ``model.onnx`` (folded): structural comparison (with the
    FLOPs recorded in ``config.json``) and interleaved onnxruntime latency. Writes ``overhead.json`` there.
    Raises FileNotFoundError when either ONNX file is missing.
    """
    directory = Path(export_dir) if export_dir is not None else latest(
        workdir, "exports", "run `taslora export --onnx` first")
    folded, base = directory / MODEL_ONNX, baseline_onnx(directory)
    if not folded.exists() or not base.exists():
        raise FileNotFoundError(
            f"{directory} lacks {MODEL_ONNX} or {BASELINE_ONNX}; re-run `taslora export --onnx`")
    config_path = directory / MODEL_CONFIG
    config = read_json_artifact(config_path, "model config", "re-export it with `taslora export`") if config_path.exists() else {}
    f = config.get("flops_macs")
    structure = structural_compare(folded, base, flops_a=f, flops_b=f)
    shape = tuple(config.get("input_shape", ())) or None
    res = interleaved_latency(ort_runner(base, batch, shape, device=device, threads=threads),
                              ort_runner(folded, batch, shape, device=device, threads=threads),
                              warmup_s=warmup_s, iters=iters)
    ok_lat = within_tolerance(res, tolerance, two_sided=True)
    latency = {**res, "runtime": f"onnxruntime-{device}", "batch": batch, "tolerance": tolerance,
               "within_tolerance": ok_lat}
    report_path = atomic_write_json(directory / OVERHEAD_REPORT, {"structure": structure, "latency": latency})
    return OverheadCheck(directory, structure, latency, report_path)
