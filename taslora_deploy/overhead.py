"""Zero-overhead checks: structural comparison of two ONNX files and interleaved latency.

Typical use: A = plain ViT of an architecture, B = the same architecture after
folding the TAS-LoRA experts into its weights.  Structurally they must be identical
(same ops, same parameter shapes/counts, same FLOPs), and their latency ratio B/A
must be ~1.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from taslora_deploy.onnx_export import (
    initializer_param_count,
    onnx_input_info,
    op_histogram,
    ort_session,
    referenced_param_count,
    referenced_param_shapes,
)

__all__ = [
    "OverheadError",
    "structural_compare",
    "assert_same_structure",
    "interleaved_latency",
    "within_tolerance",
    "ort_runner",
    "torch_runner",
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


def _io_signature(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init_names = {i.name for i in model.graph.initializer}

    def sig(vi):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        return {"name": vi.name, "dtype": onnx.TensorProto.DataType.Name(tt.elem_type), "shape": dims}

    return {
        "inputs": [sig(v) for v in model.graph.input if v.name not in init_names],
        "outputs": [sig(v) for v in model.graph.output],
    }


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
    io_a, io_b = _io_signature(pa), _io_signature(pb)
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


# --------------------------------------------------------------------------- latency


def _spread(values_ms: np.ndarray, prefix: str) -> dict[str, float]:
    q10, q25, q50, q75, q90 = np.percentile(values_ms, [10, 25, 50, 75, 90])
    return {
        f"median_{prefix}_ms": float(q50),
        f"mean_{prefix}_ms": float(values_ms.mean()),
        f"min_{prefix}_ms": float(values_ms.min()),
        f"p10_{prefix}_ms": float(q10),
        f"p90_{prefix}_ms": float(q90),
        f"iqr_{prefix}_ms": float(q75 - q25),
    }


def interleaved_latency(
    run_a: Callable[[], Any],
    run_b: Callable[[], Any],
    warmup_s: float = 1.0,
    iters: int = 200,
    inner: int = 1,
) -> dict:
    """Time two zero-argument callables alternately (pairs AB, BA, AB, ...).

    After a time-based warm-up (alternating, at least one call each), ``iters``
    pairs are measured; within a pair the order alternates so neither side always
    runs first.  Each sample is the wall time of ``inner`` consecutive calls
    (``time.perf_counter``) divided by ``inner``.  The garbage collector is paused
    while timing.  The callables must synchronise themselves (e.g. CUDA).

    Report keys: ``median_a_ms``, ``median_b_ms`` (plus mean/min/p10/p90/iqr for
    each), ``ratio_median`` (median of per-pair ratios B/A), ``ratio_p10``,
    ``ratio_p90``, ``ratio_iqr``, ``ratio_of_medians``, ``iters``, ``inner``,
    ``warmup_s``, ``warmup_pairs``.
    """
    if iters < 1 or inner < 1:
        raise ValueError("iters and inner must be >= 1")
    perf = time.perf_counter

    warm_pairs = 0
    t_end = perf() + max(float(warmup_s), 0.0)
    while True:
        run_a()
        run_b()
        warm_pairs += 1
        if perf() >= t_end:
            break

    ta = np.empty(iters)
    tb = np.empty(iters)

    def timed(fn) -> float:
        t0 = perf()
        for _ in range(inner):
            fn()
        return (perf() - t0) / inner

    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for i in range(iters):
            if i % 2 == 0:
                ta[i] = timed(run_a)
                tb[i] = timed(run_b)
            else:
                tb[i] = timed(run_b)
                ta[i] = timed(run_a)
    finally:
        if gc_was_enabled:
            gc.enable()

    tiny = 1e-12  # perf_counter resolution guard
    ratios = np.maximum(tb, tiny) / np.maximum(ta, tiny)
    r10, r25, r50, r75, r90 = np.percentile(ratios, [10, 25, 50, 75, 90])
    a_ms, b_ms = ta * 1e3, tb * 1e3
    report: dict[str, Any] = {"iters": int(iters), "inner": int(inner), "warmup_s": float(warmup_s),
                              "warmup_pairs": warm_pairs}
    report.update(_spread(a_ms, "a"))
    report.update(_spread(b_ms, "b"))
    report.update(
        ratio_median=float(r50),
        ratio_p10=float(r10),
        ratio_p90=float(r90),
        ratio_iqr=float(r75 - r25),
        ratio_of_medians=float(max(np.median(b_ms), tiny) / max(np.median(a_ms), tiny)),
    )
    return report


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


# --------------------------------------------------------------------------- runners


def ort_runner(
    path: str | os.PathLike,
    batch: int,
    input_shape: Sequence[int] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
    allow_spinning: bool = False,
) -> Callable[[], Any]:
    """Zero-arg callable running the ONNX model once on a pre-allocated random batch.

    Thread spinning is off by default so that alternating A/B runs do not steal
    cores from each other (idle onnxruntime workers otherwise busy-wait).

    ``input_shape`` (C, H, W) defaults to the static dims of the ONNX input.  On
    CUDA the input lives on the GPU and the output is bound on the GPU (IOBinding),
    so the timing excludes host/device copies.  The callable carries ``.session``,
    ``.provider`` and ``.input_shape`` attributes.
    """
    from taslora_deploy.onnx_export import _parse_device

    path = Path(path)
    _, dims, np_dtype = onnx_input_info(path)
    if input_shape is None:
        if any(d is None for d in dims[1:]):
            raise ValueError(f"{path} has non-static image dims {dims}; pass input_shape")
        input_shape = dims[1:]
    input_shape = tuple(int(s) for s in input_shape)
    sess = ort_session(path, device=device, threads=threads, allow_spinning=allow_spinning)
    in_name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    x = np.random.default_rng(seed).standard_normal((int(batch), *input_shape)).astype(np_dtype)

    kind, idx = _parse_device(device)
    if kind == "cpu":
        feed = {in_name: x}

        def run():
            return sess.run(out_names, feed)
    else:
        import onnxruntime as ort

        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", idx)
        binding = sess.io_binding()
        binding.bind_ortvalue_input(in_name, x_dev)
        for name in out_names:
            binding.bind_output(name, "cuda", idx)

        def run():
            sess.run_with_iobinding(binding)

    run.session = sess  # type: ignore[attr-defined]
    run.provider = sess.get_providers()[0]  # type: ignore[attr-defined]
    run.input_shape = input_shape  # type: ignore[attr-defined]
    run.dtype = str(np.dtype(np_dtype))  # type: ignore[attr-defined]
    return run


def torch_runner(
    module: torch.nn.Module,
    batch: int,
    input_shape: Sequence[int],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> Callable[[], Any]:
    """Zero-arg callable running ``module`` (eval, inference_mode) on a pre-allocated batch.

    The module is moved to ``device``; the input uses ``dtype`` or the module's
    parameter dtype.  On CUDA each call synchronises the device so wall-clock
    timing is meaningful.
    """
    device = torch.device(device)
    module = module.eval().to(device)
    if dtype is None:
        dtype = next((p.dtype for p in module.parameters()), torch.float32)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((int(batch), *(int(s) for s in input_shape)), generator=gen).to(device=device, dtype=dtype)
    is_cuda = device.type == "cuda"

    def run():
        with torch.inference_mode():
            out = module(x)
        if is_cuda:
            torch.cuda.synchronize(device)
        return out

    run.input_shape = tuple(int(s) for s in input_shape)  # type: ignore[attr-defined]
    run.dtype = str(dtype).replace("torch.", "")  # type: ignore[attr-defined]
    return run
