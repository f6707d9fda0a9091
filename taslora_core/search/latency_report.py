"""How well FLOPs rank measured latency on a target: Spearman's rank correlation over the measured candidates
and the "cliffs" (a subnet with fewer FLOPs that is slower than another by more than the measurement noise).

A cliff candidate is a pair whose cached medians differ by more than CLIFF_NOISE the wrong way round; medians
taken minutes apart on a shared machine can differ that much by chance, so when the lookup can `compare` two
subnets the worst CLIFF_CHECKS candidates are re-timed interleaved (AB, BA, ...) and only those where the
fewer-FLOPs subnet is slower in the median pair by more than the noise, and in at least 90% of the pairs
(ratio p10 > 1), are reported as cliffs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

CLIFF_CHECKS = 10
"""Cliff candidates re-timed interleaved (each costs two materialised subnets and a short timing run)."""
CLIFF_NOISE = 0.05
"""Relative latency difference below which two measurements count as equal (median of timed runs on a shared
CPU moves by a few percent between repeats)."""


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties averaged); None with fewer than 3 points or a constant variable."""
    if len(xs) < 3:
        return None
    rx, ry = _ranks(np.asarray(xs, dtype=float)), _ranks(np.asarray(ys, dtype=float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else None


def cliff_mask(flops: Sequence[float], latency_ms: Sequence[float], noise: float = CLIFF_NOISE) -> np.ndarray:
    """THE definition of a FLOPs "cliff": ``mask[i, j]`` is True when subnet i has fewer FLOPs than subnet j and a
    latency more than ``noise`` (relative) above j's (used by the search's report and the latency model's score)."""
    f, y = np.asarray(flops, dtype=float), np.asarray(latency_ms, dtype=float)
    return (f[:, None] < f[None, :]) & (y[:, None] > y[None, :] * (1.0 + noise))


Compare = Callable[[Any, Any], dict[str, float]]
"""(slower subnet, faster subnet) -> interleaved per-pair ratios slower/faster: ratio_median, ratio_p10, ratio_p90."""


def cliffs(records: Sequence[dict[str, Any]], counter: str = "autoformer", noise: float = CLIFF_NOISE,
           limit: int = 10) -> tuple[int, list[dict[str, Any]]]:
    """(count, worst `limit`) of candidate pairs where the subnet with fewer FLOPs has a median latency more
    than `noise` (relative) above the other's, worst first (largest latency ratio)."""
    flops = np.asarray([r[f"flops_{counter}"] for r in records], dtype=float)
    lat = np.asarray([r["latency_ms"] for r in records], dtype=float)
    pairs = np.argwhere(cliff_mask(flops, lat, noise))
    ratios = lat[pairs[:, 0]] / lat[pairs[:, 1]] if len(pairs) else np.zeros(0)
    worst = [pairs[i] for i in np.argsort(-ratios, kind="mergesort")[:limit]]
    shown = [{
        "fewer_flops": records[i]["subnet"], "more_flops": records[j]["subnet"],
        "flops": [float(flops[i]), float(flops[j])], "latency_ms": [float(lat[i]), float(lat[j])],
        "slower_by": float(lat[i] / lat[j] - 1.0),
    } for i, j in worst]
    return int(len(pairs)), shown


def latency_report(history: Sequence[dict[str, Any]], target: str | None, counter: str = "autoformer",
                   noise: float = CLIFF_NOISE, compare: Compare | None = None,
                   checks: int | None = None) -> dict[str, Any]:
    """The report summary.json and the CLI show: measured candidates, Spearman(FLOPs, latency), the cliffs.

    With `compare` (a lookup's interleaved re-timing) the worst `checks` (default CLIFF_CHECKS) candidates are
    re-timed and "cliffs" lists only the confirmed ones; without it, the candidates (marked unconfirmed)."""
    from taslora_core.subnet import Subnet

    measured = [r for r in history if r.get("latency_ms") is not None and math.isfinite(float(r["latency_ms"]))]
    checks = CLIFF_CHECKS if checks is None else checks
    count, worst = cliffs(measured, counter, noise, limit=checks if compare is not None else 10)
    confirmed = []
    for pair in worst:
        if compare is None:
            confirmed.append({**pair, "confirmed": False})
            continue
        ratios = compare(Subnet.from_dict(pair["fewer_flops"]), Subnet.from_dict(pair["more_flops"]))
        if ratios["ratio_median"] > 1.0 + noise and ratios["ratio_p10"] > 1.0:
            confirmed.append({**pair, "confirmed": True, "interleaved": ratios,
                              "slower_by": ratios["ratio_median"] - 1.0})
    return {
        "target": target, "counter": counter, "measured": len(measured),
        "spearman_flops_latency": spearman([r[f"flops_{counter}"] for r in measured],
                                           [r["latency_ms"] for r in measured]),
        "cliff_noise": noise, "cliff_candidates": count, "cliffs_checked": len(worst) if compare else 0,
        "cliff_count": len(confirmed) if compare else count, "cliffs": confirmed,
    }
