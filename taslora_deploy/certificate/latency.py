"""The latency half of the zero-overhead certificate: is the folded model as fast as the same subnet without LoRA?

For each batch size, :func:`equivalence_test` warms both runners up, then times interleaved A/B pairs (A = no-LoRA
baseline, B = folded; which goes first is drawn at random in balanced blocks) in growing rounds
(:func:`taslora_deploy.timing.sequential_pairs`) and consults the TOST rule of
:mod:`taslora_deploy.certificate.equivalence` after each round: it stops as soon as the 90% CI of the median
per-pair ratio B/A is inside the margin (equivalent) or entirely outside it (different), the verdict persisting
(at least 1 s of timed pairs, both halves agreeing), or when the per-batch time limit passes (then the verdict
may be inconclusive: the machine was too noisy to say). :func:`latency_certificate` runs it for every batch size
and records the environment (runtime versions, threads, CPU model, load average before and after). On CUDA the
verdict is taken on CUDA-event times (GPU compute), the host wall clock is recorded too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from taslora_deploy.certificate.equivalence import (DEFAULT_CONFIDENCE, DEFAULT_MARGIN, INCONCLUSIVE,
                                                    EquivalenceRule, combine_verdicts, paired_equivalence)
from taslora_deploy.timing import (Runner, balanced_order, pair_ratio_stats, sequential_pairs, time_pairs,
                                   time_pairs_events, torch_threads, warm_up)

__all__ = ["LatencyTestConfig", "equivalence_test", "latency_certificate", "verdict_line"]

RunnerPair = tuple[Runner, Runner]


@dataclass(frozen=True)
class LatencyTestConfig:
    """How the latency equivalence test runs (per batch size: warm-up, then pairs until decided or time is up)."""

    batch_sizes: tuple[int, ...] = (1, 8)
    margin: float = DEFAULT_MARGIN
    confidence: float = DEFAULT_CONFIDENCE
    warmup_s: float = 0.5
    first_pairs: int = 100  # pairs before the first look
    max_pairs: int = 4000
    time_limit_s: float = 3.0  # per batch size, warm-up excluded
    min_evidence_s: float = 1.0  # timed seconds a verdict must persist before it counts (certificate/equivalence.py)
    resamples: int = 1000  # bootstrap resamples per look
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ValueError(f"latency batch sizes must be >= 1, got {self.batch_sizes}")
        if self.first_pairs < 2 or self.max_pairs < self.first_pairs:
            raise ValueError(f"need 2 <= first pairs <= max pairs, got {self.first_pairs} and {self.max_pairs}")
        if self.time_limit_s <= 0 or self.warmup_s < 0 or self.min_evidence_s < 0:
            raise ValueError(f"the latency time limit must be > 0 s (and warm-up, evidence >= 0), got "
                             f"{self.time_limit_s}, {self.warmup_s}, {self.min_evidence_s}")
        self.rule  # noqa: B018 - validates margin and confidence

    @property
    def rule(self) -> EquivalenceRule:
        """The TOST rule (margin, confidence)."""
        return EquivalenceRule(self.margin, self.confidence)


def equivalence_test(run_a: Runner, run_b: Runner, config: LatencyTestConfig = LatencyTestConfig(),
                     events: bool = False, make_event: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The sequential equivalence test of one runner pair (see the module docstring).

    ``events``: time with CUDA events on the runners' ``.stream`` (GPU compute time decides; host time recorded);
    ``make_event`` replaces ``torch.cuda.Event`` (tests). Returns
    :func:`~taslora_deploy.certificate.equivalence.paired_equivalence`'s keys plus ``looks`` (pairs, CI and verdict at each look), ``stopped``, ``seconds``, ``clock``, ``warmup_pairs`` and
    the per-pair spread of :func:`~taslora_deploy.timing.pair_ratio_stats` (``median_a_ms``, ``ratio_median``, ...).
    """
    rule, rng = config.rule, np.random.default_rng(config.seed)
    # the evidence a verdict needs cannot exceed what the time limit allows (then the last look may decide)
    evidence_s = min(config.min_evidence_s, 0.5 * config.time_limit_s)
    warm = warm_up([run_a, run_b], seconds=config.warmup_s)
    host: list[tuple[np.ndarray, np.ndarray]] = []

    def measure(k: int) -> tuple[np.ndarray, np.ndarray]:
        order = balanced_order(k, rng)
        if not events:
            return time_pairs(run_a, run_b, k, a_first=order, collect=False)
        extra = {} if make_event is None else {"make_event": make_event}
        ha, hb, ga, gb = time_pairs_events(run_a, run_b, run_a.stream, run_b.stream, k, order, **extra)
        host.append((ha, hb))
        return ga, gb

    looks: list[dict[str, Any]] = []

    def decided(ta: np.ndarray, tb: np.ndarray) -> bool:
        res = paired_equivalence(ta, tb, rule, describe=False, min_evidence_s=evidence_s)
        looks.append({"pairs": res["pairs"], "ci": res["ratio_ci"], "verdict": res["verdict"],
                      **({"unconfirmed": res["unconfirmed"]} if res["unconfirmed"] else {})})
        return res["verdict"] != INCONCLUSIVE

    seq = sequential_pairs(measure, decided, first=config.first_pairs, max_pairs=config.max_pairs,
                           time_limit_s=config.time_limit_s)
    final = paired_equivalence(seq.ta, seq.tb, rule, config.resamples, config.seed, min_evidence_s=evidence_s)
    out = {**final, "looks": looks,
           "stopped": seq.stopped, "seconds": seq.seconds, "clock": "cuda-events" if events else "host",
           "warmup_pairs": warm, **pair_ratio_stats(seq.ta, seq.tb)}
    if events and host:
        ha, hb = (np.concatenate([h[i] for h in host]) for i in (0, 1))
        out["host"] = {"median_a_ms": float(np.median(ha) * 1e3), "median_b_ms": float(np.median(hb) * 1e3),
                       "ratio_of_medians": float(np.median(hb) / np.median(ha))}
    return out


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
        r["verdict"] for r in batches.values()), **{k: v for k, v in asdict(config).items()},
            "region": list(config.rule.region), "batches": batches, "environment": env,
            "seconds": time.perf_counter() - started}


def verdict_line(res: dict[str, Any]) -> str:
    """One line: verdict, median per-pair ratio B/A with its CI, pairs and why the test stopped."""
    lo, hi = res["ratio_ci"]
    stopped = f", {res['stopped']}" if res.get("stopped") else ""
    return (f"{res['verdict']} (B/A {res['ratio']:.4f}, {100 * res['confidence']:.0f}% CI {lo:.4f}..{hi:.4f}, "
            f"margin {100 * res['margin']:g}%; {res['pairs']} pairs{stopped})")
