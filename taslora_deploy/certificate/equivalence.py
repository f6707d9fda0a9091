"""THE latency decision of the certificate: is B (folded) no slower than A (the no-LoRA twin) beyond a margin?

The question is one-sided (non-inferiority): overhead is B being *slower*. With ``limit = 1 + margin`` (2% by
default) and the ratio ``B/A`` estimated by the **median of the per-pair ratios** ``tb[i] / ta[i]``
(:func:`taslora_deploy.timing.pair_log_ratios`; within a pair A and B run back to back in random order, so drift
and most contention cancel in the pair's ratio):

- **equivalent** (passes; "not slower"): the one-sided upper confidence bound of the median ratio is below
  ``limit``. A model measured *faster* passes too, with a note (``direction`` "faster": the two-sided interval
  lies entirely below ``1 / limit``); faster is not overhead, and with identical graphs it can only be an
  artifact of the measurement (memory placement, the machine);
- **different** (fails; "slower"): the one-sided lower confidence bound is above ``limit``;
- **inconclusive** (a warning): neither bound clears ``limit``: the measurement was too noisy to say.

The bounds are the distribution-free ones of a median: order statistics ``k`` and ``n + 1 - k`` of the sorted
log-ratios with ``k`` from Binomial(n, 1/2) (:func:`order_rank`; exact for independent pairs, no resampling). The
level of each look comes from the alpha-spending schedule (:mod:`taslora_deploy.certificate.schedule`), so over
all looks together P(certify | B/A = limit) <= ``alpha`` and P(fail | B/A = limit) <= ``fail_alpha`` (at
B/A = 1, a failure needs the bound to be off by the whole margin: far rarer).

**A verdict must persist** (``persist``). On a shared machine consecutive pairs are not always independent:
another process can slow one side of many consecutive pairs for a while, and a bound computed as if the pairs
were independent is then too tight. So a bound counts only when the evidence spans at least ``min_span_s``
seconds and the median ratio of the first half of the pairs and of the second half (in time order) both lie on
the verdict's side of ``limit``; otherwise that look is inconclusive (``unconfirmed`` says why) and the test goes
on. Persistence only ever turns a verdict into *inconclusive*, so it cannot raise either error rate; the
Monte Carlo test (tests/test_certificate_rule.py) measures how much it lowers them under bursts of contention.

**Runner sessions differ** (``session_sd``). One test times one pair of runners (sessions, engines, modules), and
a fresh pair of the same two models gives a ratio that differs by more than the pairs' own noise: on onnxruntime
CPU, 40 checks of identical graphs, each on fresh sessions, spread with a standard deviation of 0.5% of the ratio
where each check's interval implied 0.2% (benchmarks/bench_certificate.py, docs/results.md). The claim is about the
models, not about one session, so the bounds add this between-session spread: each one-sided bound's distance
from the median ratio (log scale) is combined in quadrature with ``z(level) * session_sd``. With it, P(certify |
B/A = 1 + margin) stays at ``alpha`` when sessions differ; without it (``session_sd`` 0) it was 12-33% on real
runners at the margin.

Also reported, descriptive only: the two-sided ``confidence`` interval of the median ratio (``ratio_ci``), the
ratio of medians and of 90th percentiles with percentile-bootstrap intervals over pairs (pair indices resampled,
so A and B stay paired), and the p90 ratio's own one-sided classification ``p90_verdict``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np

from taslora_deploy.timing import pair_log_ratios, pair_ratio_stats

__all__ = ["EQUIVALENT", "DIFFERENT", "INCONCLUSIVE", "VERDICTS", "DEFAULT_MARGIN", "DEFAULT_ALPHA",
           "DEFAULT_CONFIDENCE", "DEFAULT_SESSION_SD", "RULE", "LatencyRule", "binomial_cdf", "order_rank", "median_ratio_interval",
           "look_verdicts", "judge_look", "bootstrap_ratio_ci", "describe_pairs", "combine_verdicts",
           "clopper_pearson_upper"]

EQUIVALENT, DIFFERENT, INCONCLUSIVE = "equivalent", "different", "inconclusive"
VERDICTS = (EQUIVALENT, DIFFERENT, INCONCLUSIVE)
_CODES = {0: INCONCLUSIVE, 1: EQUIVALENT, 2: DIFFERENT}
DEFAULT_MARGIN = 0.02
DEFAULT_ALPHA = 0.05  # each error rate, all looks together
DEFAULT_CONFIDENCE = 0.90  # the two-sided interval reported beside the verdict
DEFAULT_RESAMPLES = 1000
TAIL_QUANTILE = 90.0
RULE = ("non-inferiority: equivalent when the one-sided upper bound of the median per-pair ratio B/A (widened by "
        "the between-session spread) is below 1 + margin, different when the lower bound is above it, at each "
        "look's alpha-spending level; a verdict must persist (evidence span, both halves)")
DEFAULT_SESSION_SD = 0.005
"""Between-session standard deviation of log(B/A) the bounds allow for (measured on onnxruntime CPU and torch CPU,
docs/results.md)."""
_BLOCK = 250  # bootstrap resamples per chunk (memory: _BLOCK x pairs indices)


@dataclass(frozen=True)
class LatencyRule:
    """The margin, the two error levels and the reported interval of the one-sided rule (module docstring)."""

    margin: float = DEFAULT_MARGIN
    alpha: float = DEFAULT_ALPHA
    """P(equivalent | B/A = 1 + margin), all looks together."""
    fail_alpha: float = DEFAULT_ALPHA
    """P(different | B/A = 1 + margin), all looks together (at B/A = 1 it is far smaller)."""
    confidence: float = DEFAULT_CONFIDENCE
    persist: bool = True
    session_sd: float = DEFAULT_SESSION_SD
    """Between-session standard deviation of log(B/A) added to the bounds (module docstring); 0: none."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.session_sd < 0.5:
            raise ValueError(f"the latency test's session spread must be in [0, 0.5) (log-ratio sd), not "
                             f"{self.session_sd}")
        if not 0.0 < self.margin < 1.0:
            raise ValueError(f"the latency margin must be between 0 and 1 (e.g. 0.02 for 2%), not {self.margin}")
        for name in ("alpha", "fail_alpha"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise ValueError(f"the latency test's {name.replace('_', ' ')} must be in (0, 0.5), not "
                                 f"{getattr(self, name)}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"the confidence level must be in [0.5, 1), not {self.confidence}")

    @property
    def limit(self) -> float:
        """B/A above which B is slower than we accept: ``1 + margin``."""
        return 1.0 + self.margin

    @property
    def faster_limit(self) -> float:
        """B/A below which a two-sided interval says "faster" (a note, never a failure): ``1 / (1 + margin)``."""
        return 1.0 / (1.0 + self.margin)

    def classify(self, lo: float, hi: float) -> str:
        """The one-sided verdict of bounds ``lo`` and ``hi`` of B/A (an infinite or NaN bound decides nothing)."""
        if hi < self.limit:
            return EQUIVALENT
        if lo > self.limit:
            return DIFFERENT
        return INCONCLUSIVE


def binomial_cdf(k: int, n: int, p: float = 0.5) -> float:
    """P(Binomial(n, p) <= k), summed in the log domain (n up to a few 10^4)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    head = math.lgamma(n + 1)
    return min(1.0, sum(math.exp(head - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq)
                        for j in range(k + 1)))


@lru_cache(maxsize=4096)
def order_rank(n: int, alpha: float) -> int:
    """The largest k (1-based) with P(Binomial(n, 1/2) <= k - 1) <= alpha; 0 when none. The k-th smallest of n
    independent values with median m is above m with probability at most ``alpha`` (and the k-th largest below)."""
    if alpha <= 0.0:
        return 0
    log_half, head = n * math.log(0.5), math.lgamma(n + 1)
    cdf, k = 0.0, 0
    for j in range(n // 2 + 1):
        cdf += math.exp(head - math.lgamma(j + 1) - math.lgamma(n - j + 1) + log_half)
        if cdf > alpha:
            break
        k = j + 1
    return k


def _bounds(d: np.ndarray, upper_alpha: float, lower_alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) one-sided bounds of the median of ``d`` along its last axis (+inf / -inf when too few)."""
    n = d.shape[-1]
    ku, kl = order_rank(n, upper_alpha), order_rank(n, lower_alpha)
    kth = sorted({i for i in ((n - ku) if ku else None, (kl - 1) if kl else None) if i is not None})
    part = np.partition(d, kth, axis=-1) if kth else d
    shape = d.shape[:-1]
    upper = part[..., n - ku] if ku else np.full(shape, np.inf)
    lower = part[..., kl - 1] if kl else np.full(shape, -np.inf)
    return upper, lower


def median_ratio_interval(d: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Two-sided ``confidence`` interval of the median per-pair ratio from log-ratios ``d`` (descriptive; ``(0,
    inf)`` when there are too few pairs for the level)."""
    tail = (1.0 - confidence) / 2.0
    upper, lower = _bounds(np.asarray(d, dtype=np.float64), tail, tail)
    return float(np.exp(lower)), float(np.exp(upper))


def look_verdicts(d: np.ndarray, rule: LatencyRule, alpha: float, fail_alpha: float,
                  span_ok: bool | np.ndarray = True) -> dict[str, np.ndarray]:
    """The rule at one look, vectorised over the leading axes of ``d`` (log-ratios in time order along the last
    axis): ``code`` (0 inconclusive, 1 equivalent, 2 different), the one-sided ``upper`` / ``lower`` bounds of B/A
    at the look's levels, whether a bound cleared the limit (``certify``, ``fail``) and the halves' median ratios."""
    d = np.asarray(d, dtype=np.float64)
    if d.shape[-1] < 2:
        raise ValueError(f"a look needs at least 2 pairs, got {d.shape[-1]}")
    limit = math.log(rule.limit)
    upper, lower = _bounds(d, alpha, fail_alpha)
    if rule.session_sd > 0:
        upper, lower = _with_sessions(d, upper, lower, rule.session_sd, alpha, fail_alpha)
    certify, fail = upper < limit, lower > limit
    half = d.shape[-1] // 2
    first, second = np.median(d[..., :half], axis=-1), np.median(d[..., half:], axis=-1)
    if rule.persist:
        ok = np.asarray(span_ok, dtype=bool)
        certify_kept = certify & ok & (first < limit) & (second < limit)
        fail_kept = fail & ok & (first > limit) & (second > limit)
    else:
        certify_kept, fail_kept = certify, fail
    code = np.where(certify_kept, 1, np.where(fail_kept, 2, 0))
    return {"code": code, "upper": np.exp(upper), "lower": np.exp(lower), "certify": certify, "fail": fail,
            "first_half": np.exp(first), "second_half": np.exp(second)}


def _z(level: float) -> float:
    """The standard normal quantile 1 - ``level`` (inf for a level of 0)."""
    return NormalDist().inv_cdf(1.0 - level) if 0.0 < level < 0.5 else (math.inf if level <= 0.0 else 0.0)


def _with_sessions(d: np.ndarray, upper: np.ndarray, lower: np.ndarray, session_sd: float, alpha: float,
                   fail_alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The bounds with the between-session spread added in quadrature to their distance from the median."""
    med = np.median(d, axis=-1)
    with np.errstate(invalid="ignore"):
        up = med + np.sqrt(np.maximum(upper - med, 0.0) ** 2 + (_z(alpha) * session_sd) ** 2)
        low = med - np.sqrt(np.maximum(med - lower, 0.0) ** 2 + (_z(fail_alpha) * session_sd) ** 2)
    return np.where(np.isfinite(upper), up, upper), np.where(np.isfinite(lower), low, lower)


def judge_look(d: np.ndarray, rule: LatencyRule, alpha: float, fail_alpha: float, span_s: float,
               min_span_s: float) -> dict[str, Any]:
    """One look of one test as the certificate records it: pairs, span, levels, bounds, verdict and, when a bound
    cleared the limit but the evidence did not persist, ``unconfirmed`` (why)."""
    res = look_verdicts(d, rule, alpha, fail_alpha, span_s >= min_span_s)
    verdict = _CODES[int(res["code"])]
    out: dict[str, Any] = {"pairs": int(np.shape(d)[-1]), "span_s": float(span_s), "alpha": float(alpha),
                           "fail_alpha": float(fail_alpha), "upper": float(res["upper"]),
                           "lower": float(res["lower"]), "verdict": verdict}
    cleared = EQUIVALENT if bool(res["certify"]) else DIFFERENT if bool(res["fail"]) else None
    if cleared is not None and verdict == INCONCLUSIVE:
        out["unconfirmed"] = _why_unconfirmed(cleared, res, rule, span_s, min_span_s)
    return out


def _why_unconfirmed(cleared: str, res: dict[str, np.ndarray], rule: LatencyRule, span_s: float,
                     min_span_s: float) -> str:
    if span_s < min_span_s:
        return f"the pairs span {span_s:.2f} s, less than the {min_span_s:g} s a verdict must persist"
    side = "below" if cleared == EQUIVALENT else "above"
    for name in ("first", "second"):
        r = float(res[f"{name}_half"])
        if (r < rule.limit) != (cleared == EQUIVALENT):
            return f"the {name} half of the pairs has median ratio {r:.4f}, not {side} {rule.limit:g}"
    return "not confirmed"


def bootstrap_ratio_ci(ta: np.ndarray, tb: np.ndarray, q: float = 50.0, confidence: float = DEFAULT_CONFIDENCE,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval over pairs of ``percentile(tb, q) / percentile(ta, q)`` (``ta[i]`` and
    ``tb[i]`` resampled together; seeded, so deterministic)."""
    pair_log_ratios(ta, tb)  # validates the shapes
    ta, tb = np.asarray(ta, dtype=np.float64), np.asarray(tb, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, resamples, _BLOCK):
        idx = rng.integers(0, ta.size, size=(min(_BLOCK, resamples - start), ta.size))
        ratios.append(np.percentile(tb[idx], q, axis=1) / np.percentile(ta[idx], q, axis=1))
    alpha = 1.0 - confidence
    lo, hi = np.percentile(np.concatenate(ratios), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def describe_pairs(ta: np.ndarray, tb: np.ndarray, rule: LatencyRule, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0) -> dict[str, Any]:
    """What the certificate reports of the pairs beside the verdict (nothing here decides): the one summary of
    :func:`taslora_deploy.timing.pair_ratio_stats`, ``ratio`` (= its ``ratio_median``, the deciding statistic)
    with its two-sided ``ratio_ci``, ``direction`` "faster" when that interval lies below ``1 / (1 + margin)``,
    and with ``resamples`` > 0 the bootstrap intervals of the ratio of medians and of p90s and ``p90_verdict``."""
    stats = pair_ratio_stats(ta, tb)
    lo, hi = median_ratio_interval(pair_log_ratios(ta, tb), rule.confidence)
    out: dict[str, Any] = {"pairs": int(np.size(ta)), "ratio": stats["ratio_median"], "ratio_ci": [lo, hi],
                           "faster": hi < rule.faster_limit, **stats}
    if resamples > 0:
        med_lo, med_hi = bootstrap_ratio_ci(ta, tb, 50.0, rule.confidence, resamples, seed)
        p90_lo, p90_hi = bootstrap_ratio_ci(ta, tb, TAIL_QUANTILE, rule.confidence, resamples, seed + 1)
        tb90, ta90 = np.percentile(tb, TAIL_QUANTILE), np.percentile(ta, TAIL_QUANTILE)
        out.update(ratio_of_medians_ci=[med_lo, med_hi], ratio_of_p90s=float(tb90 / ta90),
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


def clopper_pearson_upper(events: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen ``events`` times in ``trials`` (0 of 20 at 95%:
    0.139): the largest p with P(Binomial(trials, p) <= events) >= 1 - confidence, by bisection."""
    if trials < 1 or not 0 <= events <= trials:
        raise ValueError(f"need 0 <= events <= trials and trials >= 1, got {events} of {trials}")
    if events == trials:
        return 1.0
    lo, hi = events / trials, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binomial_cdf(events, trials, mid) > 1.0 - confidence else (lo, mid)
    return hi
