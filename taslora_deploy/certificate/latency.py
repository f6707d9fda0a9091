"""The latency half of the zero-overhead certificate: is the folded model no slower than the same subnet without LoRA?

For each batch size, :func:`equivalence_test`

1. warms both runners up (``warmup_s``);
2. chooses ``inner``, the calls per timed sample, like timeit's autorange (:func:`taslora_deploy.timing.pair_autorange`:
   1, 2, 5, 10, ... calls until a sample lasts >= 0.2 ms on the clock used), so a 20 us model is timed in samples
   of 10 calls instead of at the clock's grain;
3. times four probe pairs and plans the test before it starts (:func:`plan_pairs`): the pairs that fill 95% of the
   time limit at the probes' median pair time, at most ``max_pairs``; when ``max_pairs`` pairs could not span the
   ``min_span_s`` a verdict must persist, ``inner`` grows until they can; the looks halve down from the planned pairs to ``first_pairs``
   (:mod:`taslora_deploy.certificate.schedule`), each with its alpha-spending level;
4. times interleaved A/B pairs (A = no-LoRA baseline, B = folded; which goes first is drawn at random in balanced
   blocks) and consults the one-sided rule of :mod:`taslora_deploy.certificate.equivalence` at each look
   (:func:`taslora_deploy.timing.sequential_pairs`), stopping at the first verdict, after the planned pairs, or
   at the time limit (then one final look spends the error left; the verdict may be inconclusive).

:func:`latency_certificate` runs it for every batch size and records the environment (runtime versions, threads,
CPU model, load average before and after). On CUDA the verdict is taken on CUDA-event times (GPU compute), the host
wall clock is recorded too. :data:`EXPORT_TEST` and :data:`RECHECK_TEST` are the settings `taslora export` and
`taslora verify --latency` / `taslora check-overhead` start from.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from taslora_deploy.certificate.equivalence import (DEFAULT_ALPHA, DEFAULT_CONFIDENCE, DEFAULT_MARGIN,
                                                    DEFAULT_SESSION_SD, DIFFERENT,
                                                    EQUIVALENT, INCONCLUSIVE, RULE, LatencyRule, combine_verdicts,
                                                    describe_pairs, judge_look)
from taslora_deploy.certificate.schedule import LookSchedule
from taslora_deploy.timing import (MIN_SAMPLE_S, Runner, balanced_order, pair_autorange, pair_log_ratios,
                                   sequential_pairs, time_pairs, time_pairs_events, torch_threads, warm_up)

__all__ = ["LatencyTestConfig", "EXPORT_TEST", "RECHECK_TEST", "PairPlan", "plan_pairs", "equivalence_test",
           "latency_certificate", "verdict_line"]

RunnerPair = tuple[Runner, Runner]
_PROBE_PAIRS = 4
_FILL = 0.95  # share of the time limit the planned pairs fill (the loop's own overhead takes the rest)


@dataclass(frozen=True)
class LatencyTestConfig:
    """THE latency-test policy: how the test runs per batch size and what its verdicts promise. The defaults are
    the export's (:data:`EXPORT_TEST`); :data:`RECHECK_TEST` gives a re-check more time."""

    batch_sizes: tuple[int, ...] = (1, 8)
    margin: float = DEFAULT_MARGIN
    alpha: float = DEFAULT_ALPHA
    """P(equivalent | B/A = 1 + margin), all looks together."""
    fail_alpha: float = DEFAULT_ALPHA
    """P(different | B/A = 1 + margin), all looks together (far smaller at B/A = 1)."""
    confidence: float = DEFAULT_CONFIDENCE  # of the two-sided interval reported beside the verdict
    warmup_s: float = 0.5
    first_pairs: int = 100  # pairs at the first look (when the plan holds that many)
    max_pairs: int = 20000
    time_limit_s: float = 3.0  # per batch size, warm-up excluded
    min_span_s: float = 1.0  # seconds of timed samples a verdict must span (capped at 40% of the time limit)
    min_sample_s: float = MIN_SAMPLE_S  # the shortest timed sample (autorange)
    persist: bool = True  # a verdict needs the span and both halves of the pairs to agree
    session_sd: float = DEFAULT_SESSION_SD
    """Between-session spread of log(B/A) the bounds allow for (`equivalence.LatencyRule.session_sd`)."""
    resamples: int = 1000  # bootstrap resamples of the descriptive intervals (once, at the end)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ValueError(f"latency batch sizes must be >= 1, got {self.batch_sizes}")
        if self.first_pairs < 2 or self.max_pairs < self.first_pairs:
            raise ValueError(f"need 2 <= first pairs <= max pairs, got {self.first_pairs} and {self.max_pairs}")
        if self.time_limit_s <= 0 or self.warmup_s < 0 or self.min_span_s < 0 or self.min_sample_s <= 0:
            raise ValueError(f"the latency time limit and sample must be > 0 s (warm-up, span >= 0), got "
                             f"{self.time_limit_s}, {self.min_sample_s}, {self.warmup_s}, {self.min_span_s}")
        self.rule  # noqa: B018 - validates margin, error levels and confidence

    @property
    def rule(self) -> LatencyRule:
        """The one-sided rule (margin, error levels, reported interval, persistence)."""
        return LatencyRule(self.margin, self.alpha, self.fail_alpha, self.confidence, self.persist, self.session_sd)

    @property
    def span_needed_s(self) -> float:
        """Seconds of timed samples a verdict must span: ``min_span_s``, at most 40% of the time limit (so the look
        at half the planned pairs can decide)."""
        return min(self.min_span_s, 0.4 * self.time_limit_s)

    def with_options(self, **changes: Any) -> "LatencyTestConfig":
        """A copy with the given settings changed; None leaves a setting as it is (for optional CLI options)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


EXPORT_TEST = LatencyTestConfig()
"""What `taslora export` runs: 3 s of pairs per batch size."""
RECHECK_TEST = LatencyTestConfig(time_limit_s=10.0)
"""What `taslora verify --latency` and `taslora check-overhead` run: 10 s of pairs per batch size."""


@dataclass(frozen=True)
class PairPlan:
    """How one test will run, fixed before its first pair: calls per sample, the expected seconds of a pair and
    the looks."""

    inner: int
    pair_s: float
    schedule: LookSchedule


def plan_pairs(config: LatencyTestConfig, inner: int, pair_s: float, span_per_pair_s: float | None = None) -> PairPlan:
    """The plan of a test whose pair of ``inner``-call samples takes ``pair_s`` seconds of the host's clock (the time
    limit's) and adds ``span_per_pair_s`` (default ``pair_s``) to the evidence's span on the deciding clock: the
    pairs that fill 95% of the time limit (at most ``max_pairs``, at least 2), with ``inner`` first raised until
    half of ``max_pairs`` pairs can span the seconds a verdict needs (else a fast model could never be decided)."""
    pair_s = max(float(pair_s), 1e-9)
    span_pair = max(float(span_per_pair_s if span_per_pair_s is not None else pair_s), 1e-9)
    if config.max_pairs * span_pair < 2 * config.span_needed_s:
        grow = math.ceil(2 * config.span_needed_s / (config.max_pairs * span_pair))
        inner, pair_s = inner * grow, pair_s * grow
    planned = max(2, min(config.max_pairs, int(_FILL * config.time_limit_s / pair_s)))
    return PairPlan(int(inner), pair_s, LookSchedule.plan(planned, min(config.first_pairs, planned)))


def equivalence_test(run_a: Runner, run_b: Runner, config: LatencyTestConfig = EXPORT_TEST,
                     events: bool = False, make_event: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The sequential latency test of one runner pair (see the module docstring).

    ``events``: time with CUDA events on the runners' ``.stream`` (GPU compute time decides; host time recorded);
    ``make_event`` replaces ``torch.cuda.Event`` (tests). Returns :func:`describe_pairs`'s keys (``ratio``,
    ``ratio_ci``, the per-pair spread, ...) plus ``verdict``, ``direction`` ("slower" when different, "faster"
    when the interval lies below the margin, else None), ``note``, ``decision`` (the look that decided), ``looks``
    (each look's pairs, span, levels, bounds, verdict), ``schedule``, ``rule``, ``inner``, ``stopped``,
    ``seconds``, ``span_s``, ``clock``, ``warmup_pairs``.
    """
    rule, rng = config.rule, np.random.default_rng(config.seed)
    warm = warm_up([run_a, run_b], seconds=config.warmup_s)
    streams = (run_a.stream, run_b.stream) if events else None
    inner, sample_s = pair_autorange(run_a, run_b, streams, make_event, config.min_sample_s)
    host: list[tuple[np.ndarray, np.ndarray]] = []
    timed = [0.0]  # seconds the timed samples cover on the deciding clock (the evidence's span)

    def measure(k: int) -> tuple[np.ndarray, np.ndarray]:
        order = balanced_order(k, rng)
        if events:
            extra = {} if make_event is None else {"make_event": make_event}
            ha, hb, a, b = time_pairs_events(run_a, run_b, run_a.stream, run_b.stream, k, order, inner=inner, **extra)
            host.append((ha, hb))
        else:
            a, b = time_pairs(run_a, run_b, k, inner=inner, a_first=order, collect=False)
        timed[0] += float(np.sum(a) + np.sum(b)) * inner
        return a, b

    probe = measure(_PROBE_PAIRS)  # timed but not kept: what a pair costs (the median: robust to a preemption)
    wall = host[-1] if events else probe  # the time limit is on the host's clock
    plan = plan_pairs(config, inner, float(np.median(wall[0] + wall[1])) * inner,
                      float(np.median(probe[0] + probe[1])) * inner)
    inner, host[:], timed[0] = plan.inner, [], 0.0
    schedule, looks = plan.schedule, []

    def decided(ta: np.ndarray, tb: np.ndarray, final: bool) -> bool:
        j = len(looks)
        res = judge_look(pair_log_ratios(ta, tb), rule, schedule.nominal(j, final, rule.alpha),
                         schedule.nominal(j, final, rule.fail_alpha), timed[0], config.span_needed_s)
        looks.append({"look": j + 1, "final": final, **res})
        return res["verdict"] != INCONCLUSIVE

    seq = sequential_pairs(measure, decided, schedule.looks, config.time_limit_s)
    last = looks[-1]
    out = {**describe_pairs(seq.ta, seq.tb, rule, config.resamples, config.seed), "verdict": last["verdict"]}
    out["direction"] = "slower" if last["verdict"] == DIFFERENT else "faster" if out.pop("faster") else None
    out.update(note=_note(out, rule), decision=_decision(last, len(schedule.looks), rule), rule=RULE,
               margin=rule.margin, confidence=rule.confidence, limit=rule.limit, looks=looks,
               schedule=schedule.to_dict(alpha=rule.alpha, fail_alpha=rule.fail_alpha), inner=inner,
               sample_ms=1e3 * sample_s, stopped=seq.stopped, seconds=seq.seconds, span_s=timed[0],
               clock="cuda-events" if events else "host", warmup_pairs=warm)
    if events and host:
        ha, hb = (np.concatenate([h[i] for h in host]) for i in (0, 1))
        out["host"] = {"median_a_ms": float(np.median(ha) * 1e3), "median_b_ms": float(np.median(hb) * 1e3),
                       "ratio_of_medians": float(np.median(hb) / np.median(ha))}
    return out


def _note(res: dict[str, Any], rule: LatencyRule) -> str | None:
    if res["direction"] != "faster":
        return None
    lo, hi = res["ratio_ci"]
    return (f"B is faster than A beyond the margin (B/A {res['ratio']:.4f}, {100 * rule.confidence:.0f}% CI "
            f"{lo:.4f}..{hi:.4f} < {rule.faster_limit:.4f}): faster is not overhead; between identical graphs it is "
            "an artifact of the measurement (memory placement, the machine)")


def _decision(look: dict[str, Any], planned: int, rule: LatencyRule) -> dict[str, Any]:
    """Which bound decided, at which look and level (for inconclusive: that none cleared the limit)."""
    bound = {EQUIVALENT: "upper", DIFFERENT: "lower"}.get(look["verdict"])
    return {"look": look["look"], "of": planned, "pairs": look["pairs"], "limit": rule.limit, "bound": bound,
            "value": look[bound] if bound else None,
            "alpha": look["alpha"] if bound == "upper" else look["fail_alpha"] if bound else None}


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def latency_certificate(make_pair: Callable[[int], RunnerPair], config: LatencyTestConfig, runtime: str,
                        threads: int | None = None, device: str = "cpu", events: bool = False,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """:func:`equivalence_test` at every batch size of ``config`` (``make_pair(batch) -> (run_a, run_b)``; A is
    the baseline), the combined verdict (different if any batch is, equivalent if all are) and the environment."""
    from taslora_deploy.machine import environment

    before, started = _load(), time.perf_counter()
    batches: dict[str, dict[str, Any]] = {}
    with torch_threads(threads if runtime.startswith("torch") else None):
        for b in config.batch_sizes:
            run_a, run_b = make_pair(int(b))
            batches[str(b)] = res = equivalence_test(run_a, run_b, config, events=events)
            log(f"latency folded/baseline ({runtime}, batch {b}): {verdict_line(res)}")
            del run_a, run_b
    env = {**environment(device, threads), "load_average_before": before, "load_average_after": _load()}
    return {"runtime": runtime, "a": "baseline (no LoRA)", "b": "folded", "verdict": combine_verdicts(
        r["verdict"] for r in batches.values()), "rule": RULE, **asdict(config), "limit": config.rule.limit,
            "batches": batches, "environment": env, "seconds": time.perf_counter() - started}


def verdict_line(res: dict[str, Any]) -> str:
    """One line: verdict, median per-pair ratio B/A with its interval, which bound decided, pairs, why it stopped."""
    lo, hi = res["ratio_ci"]
    d = res.get("decision") or {}
    if d.get("bound"):
        sign = "<" if d["bound"] == "upper" else ">"
        how = f"{d['bound']} bound {d['value']:.4f} {sign} {d['limit']:g} at look {d['look']}/{d['of']}"
    else:
        how = f"no bound cleared {res.get('limit', 1 + res['margin']):g}"
    faster = "; faster (not overhead)" if res.get("direction") == "faster" else ""
    stopped = f", {res['stopped']}" if res.get("stopped") else ""
    return (f"{res['verdict']} (B/A {res['ratio']:.4f}, {100 * res['confidence']:.0f}% CI {lo:.4f}..{hi:.4f}; "
            f"{how}{faster}; {res['pairs']} pairs{stopped})")
