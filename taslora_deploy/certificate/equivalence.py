"""Is B as fast as A? An equivalence test on interleaved A/B latency pairs (two one-sided tests, TOST).

The question of the zero-overhead check is not "is the ratio exactly 1" (no measurement can say that) but "is it
inside a margin we do not care about". TOST answers it with a confidence interval (CI) of the ratio
``latency(B) / latency(A)`` and an equivalence region ``[1 / (1 + margin), 1 + margin]`` (symmetric on the log
scale: 2% slower and 2% faster are equally far from 1):

- **equivalent**: the whole 90% CI lies inside the region (both one-sided tests at 5% reject "B is more than
  ``margin`` slower" and "B is more than ``margin`` faster");
- **different**: the whole CI lies outside the region on one side (lower bound above ``1 + margin``: B slower;
  upper bound below ``1 / (1 + margin)``: B faster);
- **inconclusive**: the CI straddles a border of the region: the measurement was too noisy to say either.

The deciding statistic is the **median of the per-pair ratios** ``tb[i] / ta[i]`` (the median of the paired
log-ratios, exponentiated). Within a pair A and B run back to back in random order, so slow drift and most
contention (load, clock changes) hit both alike and cancel in the pair's ratio; the pairs' log-ratios are then
close to independent and, for identical models, symmetric around 0. Its CI is the distribution-free one of a
median: the order statistics ``k`` and ``n + 1 - k`` of the sorted log-ratios, with ``k`` from the Binomial(n, 1/2)
distribution (exact for independent pairs; deterministic, no resampling). On a loaded 2-core machine this CI
was up to 5x narrower than a bootstrap CI of the ratio of medians on the same pairs (docs/results.md,
"Zero-overhead certificate").

**A decision must persist.** On a shared machine the pairs are not always independent: another process can slow
one side of many consecutive pairs for a while (a "regime" lasting a fraction of a second), and a CI computed as if
the pairs were independent is then too narrow, in either direction. So a CI beyond the margin is taken as
*different*, and a CI inside it as *equivalent*, only when the evidence persists: the timed pairs span at least
``min_evidence_s`` seconds, and the median per-pair ratio of the first half of the pairs and of the second half (in
time order) both agree with the verdict (both beyond the margin on the same side; both inside the region).
Otherwise the verdict is inconclusive (``unconfirmed`` says why) and the test keeps adding pairs. A real slowdown
(or its absence) shows in every stretch of time; a regime shows in one.

Also reported (descriptive, not deciding): the ratio of medians ``median(B) / median(A)`` and the ratio of 90th
percentiles, each with a percentile-bootstrap CI over pairs (pair indices resampled, so A and B stay paired); the
p90 ratio gets its own classification ``p90_verdict``. The tail of a shared machine's latency is mostly the
machine's (preemption by other processes), so it informs but does not decide.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["EQUIVALENT", "DIFFERENT", "INCONCLUSIVE", "VERDICTS", "DEFAULT_MARGIN", "DEFAULT_CONFIDENCE",
           "EquivalenceRule", "median_ratio_ci", "bootstrap_ratio_ci", "paired_equivalence", "combine_verdicts"]

EQUIVALENT, DIFFERENT, INCONCLUSIVE = "equivalent", "different", "inconclusive"
VERDICTS = (EQUIVALENT, DIFFERENT, INCONCLUSIVE)
DEFAULT_MARGIN = 0.02
DEFAULT_CONFIDENCE = 0.90  # two one-sided tests at 5% each
DEFAULT_RESAMPLES = 1000
TAIL_QUANTILE = 90.0
_BLOCK = 250  # bootstrap resamples per chunk (memory: _BLOCK x pairs indices)
_TINY_S = 1e-12


@dataclass(frozen=True)
class EquivalenceRule:
    """Margin and confidence of the TOST rule; :meth:`classify` turns a CI into a verdict."""

    margin: float = DEFAULT_MARGIN
    confidence: float = DEFAULT_CONFIDENCE

    def __post_init__(self) -> None:
        if not 0.0 < self.margin < 1.0:
            raise ValueError(f"the equivalence margin must be between 0 and 1 (e.g. 0.02 for 2%), not {self.margin}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"the confidence level must be in [0.5, 1), not {self.confidence}")

    @property
    def region(self) -> tuple[float, float]:
        """The equivalence region of the ratio B/A: ``[1 / (1 + margin), 1 + margin]``."""
        return 1.0 / (1.0 + self.margin), 1.0 + self.margin

    def classify(self, lo: float, hi: float) -> str:
        """TOST verdict of a CI ``[lo, hi]`` of the ratio B/A (an infinite or NaN bound cannot be equivalent)."""
        low, high = self.region
        if lo > high or hi < low:
            return DIFFERENT
        if low <= lo and hi <= high:
            return EQUIVALENT
        return INCONCLUSIVE


def _median_rank(n: int, confidence: float) -> int:
    """The largest k (1-based) with P(Binomial(n, 1/2) <= k - 1) <= (1 - confidence) / 2; 0 when none."""
    alpha = (1.0 - confidence) / 2
    log_half = n * math.log(0.5)
    cdf, k = 0.0, 0
    for j in range(n + 1):  # P(X <= j), summed in the log domain's exponent (n up to a few 10^4)
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + log_half)
        if cdf > alpha:
            break
        k = j + 1
    return k


def _pair_log_ratios(ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    ta, tb = np.asarray(ta, dtype=np.float64), np.asarray(tb, dtype=np.float64)
    if ta.shape != tb.shape or ta.ndim != 1 or ta.size < 2:
        raise ValueError(f"need two equally long 1-D arrays of at least 2 paired timings, got {ta.shape} and {tb.shape}")
    return np.log(np.maximum(tb, _TINY_S) / np.maximum(ta, _TINY_S))


def median_ratio_ci(ta: np.ndarray, tb: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float]:
    """(point, lo, hi): the median of the per-pair ratios ``tb / ta`` and its distribution-free CI (order
    statistics of the sorted log-ratios; ``(0, inf)`` when there are too few pairs for the confidence asked)."""
    d = np.sort(_pair_log_ratios(ta, tb))
    point = float(np.exp(np.median(d)))
    k = _median_rank(d.size, confidence)
    if k < 1:
        return point, 0.0, math.inf
    return point, float(np.exp(d[k - 1])), float(np.exp(d[d.size - k]))


def bootstrap_ratio_ci(ta: np.ndarray, tb: np.ndarray, q: float = 50.0, confidence: float = DEFAULT_CONFIDENCE,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(point, lo, hi): the ratio ``percentile(tb, q) / percentile(ta, q)`` and its percentile-bootstrap CI over
    pairs (``ta[i]`` and ``tb[i]`` are resampled together; seeded, so deterministic)."""
    _pair_log_ratios(ta, tb)  # validates the shapes
    ta, tb = np.asarray(ta, dtype=np.float64), np.asarray(tb, dtype=np.float64)
    point = float(np.percentile(tb, q) / np.percentile(ta, q))
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, resamples, _BLOCK):
        idx = rng.integers(0, ta.size, size=(min(_BLOCK, resamples - start), ta.size))
        ratios.append(np.percentile(tb[idx], q, axis=1) / np.percentile(ta[idx], q, axis=1))
    alpha = 1.0 - confidence
    lo, hi = np.percentile(np.concatenate(ratios), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(lo), float(hi)


def _unconfirmed(ta: np.ndarray, tb: np.ndarray, rule: EquivalenceRule, verdict: str, min_evidence_s: float) -> str | None:
    """Why a decided CI does not (yet) make its verdict: too little time, or a half of the pairs that disagrees."""
    timed = float(np.sum(ta) + np.sum(tb))
    if timed < min_evidence_s:
        return f"{timed:.2f} s of timed pairs, fewer than the {min_evidence_s:g} s a verdict must persist"
    d = _pair_log_ratios(ta, tb)
    half = d.size // 2
    low, high = rule.region
    slower = float(np.median(d)) > 0
    for name, part in (("first", d[:half]), ("second", d[half:])):
        r = float(np.exp(np.median(part)))
        inside = low <= r <= high
        if verdict == EQUIVALENT and not inside:
            return f"the {name} half of the pairs has median ratio {r:.4f}, outside the margin"
        if verdict == DIFFERENT and (inside or (r > high) != slower):
            return f"the {name} half of the pairs has median ratio {r:.4f}, not beyond the margin on the same side"
    return None


def paired_equivalence(ta: np.ndarray, tb: np.ndarray, rule: EquivalenceRule = EquivalenceRule(),
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0, describe: bool = True,
                       min_evidence_s: float = 0.0) -> dict:
    """The TOST verdict on paired timings (seconds) of A and B (in time order).

    Keys: ``pairs``, ``ratio`` (median of the per-pair ratios B/A) and ``ratio_ci`` ([lo, hi]), ``verdict``,
    ``direction`` ("slower" / "faster" when different, else None), ``unconfirmed`` (why a decided CI is not taken
    as the verdict yet, see the module docstring; else None), ``margin``, ``confidence``, ``region``; with
    ``describe`` also ``ratio_of_medians`` / ``ratio_of_p90s`` with their bootstrap CIs and ``p90_verdict``.
    """
    ta, tb = np.asarray(ta, dtype=np.float64), np.asarray(tb, dtype=np.float64)
    point, lo, hi = median_ratio_ci(ta, tb, rule.confidence)
    verdict, unconfirmed = rule.classify(lo, hi), None
    if verdict != INCONCLUSIVE:
        unconfirmed = _unconfirmed(ta, tb, rule, verdict, min_evidence_s)
        verdict = INCONCLUSIVE if unconfirmed else verdict
    out = {"pairs": int(ta.size), "ratio": point, "ratio_ci": [lo, hi], "verdict": verdict,
           "direction": None if verdict != DIFFERENT else ("slower" if lo > 1.0 else "faster"),
           "unconfirmed": unconfirmed, "margin": rule.margin, "confidence": rule.confidence,
           "region": list(rule.region)}
    if describe:
        med, med_lo, med_hi = bootstrap_ratio_ci(ta, tb, 50.0, rule.confidence, resamples, seed)
        p90, p90_lo, p90_hi = bootstrap_ratio_ci(ta, tb, TAIL_QUANTILE, rule.confidence, resamples, seed + 1)
        out.update(ratio_of_medians=med, ratio_of_medians_ci=[med_lo, med_hi], ratio_of_p90s=p90,
                   ratio_of_p90s_ci=[p90_lo, p90_hi], p90_verdict=rule.classify(p90_lo, p90_hi))
    return out


def combine_verdicts(verdicts: Iterable[str]) -> str:
    """One verdict of several tests (batch sizes, runtimes): different if any is, equivalent if all are, else
    inconclusive (no tests at all: inconclusive)."""
    seen = list(verdicts)
    if any(v not in VERDICTS for v in seen):
        raise ValueError(f"unknown verdict among {seen}; expected {VERDICTS}")
    if DIFFERENT in seen:
        return DIFFERENT
    return EQUIVALENT if seen and all(v == EQUIVALENT for v in seen) else INCONCLUSIVE
