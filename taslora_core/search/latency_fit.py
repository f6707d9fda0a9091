"""Fitting a latency model on measured subnets, choosing its form by cross-validation, and scoring it.

The model (`latency_features`): latency = features . a + lookup counts . b, fitted by least squares on the
relative error with a ridge penalty `ridge` on the lookup terms b only:

- ridge = None: the features alone (b = 0; 7 coefficients shared by every block type);
- ridge = 0: the per-block-type lookup (its terms span the features', so this is the plain lookup);
- in between: the lookup as a correction of the features, shrunk towards 0 where the measurements do not
  pin a block type down (few samples, or a type seen only in a few subnets).

`choose_ridge` picks the ridge by leave-one-out cross-validation on the fitting measurements (the held-out
subnets are never looked at), so the form adapts to the number of samples instead of being fixed by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from taslora_core.search.latency_features import FEATURES, feature_vector, lookup_names, lookup_vector, weighted_lstsq
from taslora_core.search.latency_report import CLIFF_NOISE, cliff_mask, spearman
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet

RIDGES: tuple[float | None, ...] = (0.0, 0.01, 0.1, 1.0, 10.0, 100.0, None)
"""Ridge values tried by `choose_ridge` (None: features only)."""
WITHIN = 0.10
"""The accuracy band reported: the share of subnets predicted within +-10% of their measured latency."""


@dataclass
class FittedTerms:
    """A fitted model's terms: ms per unit of each feature and ms per lookup term (stem / block type)."""

    features: dict[str, float]
    lookup: dict[str, float] = field(default_factory=dict)
    ridge: float | None = None

    @property
    def form(self) -> str:
        """'features', 'lookup' or 'lookup+features' (the lookup shrunk towards the features)."""
        if self.ridge is None:
            return "features"
        return "lookup" if self.ridge == 0 else "lookup+features"

    def predict(self, space: SearchSpace, subnet: Subnet) -> float:
        """Predicted latency (ms) of `subnet`; a block type never measured contributes its features only."""
        f = feature_vector(space, subnet)
        value = float(sum(self.features[name] * f[i] for i, name in enumerate(FEATURES)))
        if self.lookup:
            names = lookup_names(space)
            counts = lookup_vector(space, subnet, names)
            value += float(sum(self.lookup.get(name, 0.0) * c for name, c in zip(names, counts) if c))
        return value


def _matrices(space: SearchSpace, subnets: Sequence[Subnet]) -> tuple[np.ndarray, np.ndarray]:
    names = lookup_names(space)
    return (np.stack([feature_vector(space, s) for s in subnets]),
            np.stack([lookup_vector(space, s, names) for s in subnets]))


def _solve(f: np.ndarray, lk: np.ndarray, y: np.ndarray, ridge: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(feature coefficients, lookup coefficients) of one fit."""
    if ridge is None:
        return weighted_lstsq(f, y), np.zeros(lk.shape[1])
    # the penalty is on the lookup terms in units of a typical term (a block's share of a median subnet)
    typical = float(np.median(y)) / max(float(lk.sum(axis=1).mean()), 1.0)
    penalty = np.concatenate([np.zeros(f.shape[1]), np.full(lk.shape[1], ridge / typical ** 2)])
    coef = weighted_lstsq(np.hstack([f, lk]), y, penalty)
    return coef[: f.shape[1]], coef[f.shape[1]:]


def fit_terms(space: SearchSpace, subnets: Sequence[Subnet], ms: Sequence[float],
              ridge: float | None = None) -> FittedTerms:
    """Fit the model with `ridge` on measured latencies `ms` of `subnets`."""
    f, lk = _matrices(space, subnets)
    a, b = _solve(f, lk, np.asarray(ms, dtype=float), ridge)
    names, seen = lookup_names(space), lk.any(axis=0)
    lookup = {} if ridge is None else {n: float(v) for n, v, s in zip(names, b, seen) if s}
    return FittedTerms(features={n: float(v) for n, v in zip(FEATURES, a)}, lookup=lookup, ridge=ridge)


def loo_predictions(space: SearchSpace, subnets: Sequence[Subnet], ms: Sequence[float],
                    ridge: float | None) -> np.ndarray:
    """Leave-one-out predictions: each subnet predicted by the model fitted on all the others."""
    f, lk = _matrices(space, subnets)
    y = np.asarray(ms, dtype=float)
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        a, b = _solve(f[keep], lk[keep], y[keep], ridge)
        seen = lk[keep].any(axis=0)  # a term absent from the fit predicts nothing (as `fit_terms` drops it)
        out[i] = f[i] @ a + lk[i] @ np.where(seen, b, 0.0)
    return out


def choose_ridge(space: SearchSpace, subnets: Sequence[Subnet], ms: Sequence[float],
                 grid: Sequence[float | None] = RIDGES) -> tuple[float | None, dict[str, float]]:
    """The ridge of `grid` with the lowest leave-one-out mean absolute percentage error, and every value's error
    (keys: the ridge as text, 'features' for None). Ties go to the larger ridge (the simpler model)."""
    y = np.asarray(ms, dtype=float)
    errors = {ridge: float(np.mean(np.abs(loo_predictions(space, subnets, ms, ridge) - y) / y)) for ridge in grid}
    best = min(grid, key=lambda r: (round(errors[r], 9), -(math.inf if r is None else r)))
    return best, {("features" if r is None else f"{r:g}"): e for r, e in errors.items()}


def accuracy(predicted: Sequence[float], measured: Sequence[float], within: float = WITHIN) -> dict[str, float | int | None]:
    """How well `predicted` matches `measured`: n, MAPE, the share within +-`within`, the worst relative error,
    Spearman's rank correlation (None below 3 points)."""
    p, y = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    rel = np.abs(p - y) / y
    return {"n": int(len(y)), "mape": float(rel.mean()) if len(y) else math.nan,
            "within_10pct": float((rel <= within).mean()) if len(y) else math.nan,
            "max_error": float(rel.max()) if len(y) else math.nan, "spearman": spearman(list(p), list(y))}


def flops_proxy(fit_flops: Sequence[float], fit_ms: Sequence[float]) -> tuple[float, float]:
    """(intercept ms, ms per FLOP) of latency = a + b * FLOPs fitted on the relative error: FLOPs as the proxy
    a latency model has to beat."""
    x = np.stack([np.ones(len(fit_flops)), np.asarray(fit_flops, dtype=float)], axis=1)
    a, b = weighted_lstsq(x, np.asarray(fit_ms, dtype=float))
    return float(a), float(b)


def cliff_pairs(flops: Sequence[float], measured: Sequence[float], predicted: Sequence[float],
                noise: float = CLIFF_NOISE, rounds: Sequence[Sequence[float] | None] | None = None) -> dict[str, int]:
    """Cliff pairs (`latency_report.cliff_mask`) among measured subnets, and how many of them the model orders
    right (predicts the fewer-FLOPs subnet slower). With `rounds` (each subnet's per-round values) a pair counts
    only when the fewer-FLOPs subnet was slower in every round than the other in any: a cliff the measurement
    noise cannot have made."""
    p = np.asarray(predicted, dtype=float)
    mask = cliff_mask(flops, measured, noise)
    if rounds is not None and all(r for r in rounds):
        low = np.asarray([min(r) for r in rounds])  # type: ignore[type-var]
        high = np.asarray([max(r) for r in rounds])  # type: ignore[type-var]
        mask &= low[:, None] > high[None, :]
    pairs = np.argwhere(mask)
    right = int(sum(p[i] > p[j] for i, j in pairs))
    return {"pairs": int(len(pairs)), "ordered_right_by_model": right}
