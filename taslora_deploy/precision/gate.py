"""The accuracy gate of a reduced-precision export: the candidate ONNX against the fp32 ONNX on labelled images.

Both models run on onnxruntime CPU over the same batches. The gate records top-1 of each, their difference
(points), the candidate's top-1 agreement with fp32, and max/mean |logit difference|; it fails when top-1
drops by more than the allowed points.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch

from taslora_deploy.errors import PrecisionGateError

__all__ = ["DEFAULT_MAX_TOP1_DROP", "PrecisionGateError", "accuracy_gate", "gate_summary", "parse_drop_limits"]

DEFAULT_MAX_TOP1_DROP = {"fp16": 0.2, "int8": 1.0}
"""Allowed top-1 drop (percentage points, vs the fp32 export on the test split) per precision."""


Model = Union[str, os.PathLike, Callable[[np.ndarray], Any]]


def predictor(model: Model, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX file (run on onnxruntime CPU) or a callable (e.g. a TensorRT runner) as images -> float64 logits."""
    if callable(model):
        return lambda x: np.asarray(model(x), dtype=np.float64)
    from taslora_deploy.ort_parity import ort_session

    sess = ort_session(model, threads=threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0].astype(np.float64)


def accuracy_gate(reference: Model | Sequence[np.ndarray], candidate: Model,
                  batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_top1_drop: float,
                  threads: int | None = None) -> dict[str, Any]:
    """Compare `candidate` with `reference` (the fp32 export) on labelled `batches`; raise when top-1 drops
    by more than `max_top1_drop` points (:class:`PrecisionGateError`, with the numbers), else return them.

    Each model is an ONNX path (onnxruntime CPU, `threads` intra-op threads) or a callable taking a float32
    numpy batch and returning logits; `reference` may also be its logits on `batches`, one array per batch
    (computed once when several precisions are gated)."""
    batches = list(batches)
    if isinstance(reference, Sequence) and not isinstance(reference, (str, bytes)):
        if len(reference) != len(batches):
            raise ValueError(f"{len(reference)} reference logit arrays for {len(batches)} gate batches")
        ref_logits = [np.asarray(r, dtype=np.float64) for r in reference]
    else:
        run_ref = predictor(reference, threads)
        ref_logits = [run_ref(images.float().cpu().numpy()) for images, _ in batches]
    run_cand = predictor(candidate, threads)
    n = ref_ok = cand_ok = agree = 0
    max_diff, sum_diff, count, finite = 0.0, 0.0, 0, True
    for (images, labels), ref in zip(batches, ref_logits):
        got = run_cand(images.float().cpu().numpy())
        finite = finite and bool(np.isfinite(got).all())
        y = labels.cpu().numpy()
        ref_ok += int((ref.argmax(1) == y).sum())
        cand_ok += int((got.argmax(1) == y).sum())
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        diff = np.abs(got - ref)
        max_diff = max(max_diff, float(diff.max()) if diff.size else 0.0)
        sum_diff += float(diff.sum())
        count += diff.size
        n += len(y)
    if n == 0:
        raise ValueError("the accuracy gate got no images")
    top1_ref, top1 = 100.0 * ref_ok / n, 100.0 * cand_ok / n
    report = {
        "images": n, "top1_fp32": top1_ref, "top1": top1, "top1_drop": top1_ref - top1,
        "agreement": 100.0 * agree / n, "max_abs_logit_diff": max_diff,
        "mean_abs_logit_diff": sum_diff / max(count, 1), "max_top1_drop": float(max_top1_drop),
        "finite": finite,
    }
    report["passed"] = report["finite"] and report["top1_drop"] <= max_top1_drop
    if not report["passed"]:
        raise PrecisionGateError(
            ("non-finite logits; " if not finite else "") + f"top-1 {top1:.2f}% vs fp32 {top1_ref:.2f}% on {n} test images: drop {top1_ref - top1:.2f} points > "
            f"allowed {max_top1_drop:g} (agreement {report['agreement']:.2f}%, max |logit diff| {max_diff:.3g}); "
            "raise the limit with --max-top1-drop or recalibrate with more images (--calib-size)", report)
    return report


def parse_drop_limits(text: str | None, precisions: Iterable[str] = DEFAULT_MAX_TOP1_DROP) -> dict[str, float]:
    """'fp16=0.2,int8=1.0' (either part optional) -> the limits, defaults filled in; ValueError on bad text."""
    limits: dict[str, float] = dict(DEFAULT_MAX_TOP1_DROP)
    allowed = tuple(precisions)
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or key not in allowed or not number >= 0:
            raise ValueError(f"--max-top1-drop takes PRECISION=POINTS pairs for {', '.join(allowed)} "
                             f"(e.g. fp16=0.2,int8=1.0), not '{part.strip()}'")
        limits[key] = number
    return limits


def gate_summary(report: Mapping[str, Any]) -> str:
    """One line of a gate's numbers for tables and logs."""
    return (f"top-1 {report['top1']:.2f}% (fp32 {report['top1_fp32']:.2f}%, drop {report['top1_drop']:+.2f} <= "
            f"{report['max_top1_drop']:g}), agreement {report['agreement']:.2f}%, |logit diff| max "
            f"{report['max_abs_logit_diff']:.3g} mean {report['mean_abs_logit_diff']:.3g}")
