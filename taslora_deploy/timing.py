"""Wall-clock timing of zero-argument runners: the one timing loop of `bench`, `check-overhead` and latency lookups.

A runner is a callable that does one inference and returns when it is done: it synchronises its own device
(:func:`synchronize` for torch on CUDA; onnxruntime and TensorRT runners block until their outputs exist).
Every timed loop here follows the same rules:

- warm-up first (lazy initialisation, autotuning, compilation): at least ``min_calls`` rounds and until
  ``seconds`` have passed;
- each sample is ``time.perf_counter`` around ``inner`` consecutive calls, divided by ``inner`` (the clock is looked
  up at call time, so tests replace ``time.perf_counter`` with a controlled clock); :func:`autorange` chooses
  ``inner`` like :meth:`timeit.Timer.autorange` (1, 2, 5, 10, 20, 50, ... calls until one sample lasts at least
  :data:`MIN_SAMPLE_S` on the clock used), so a model of a few microseconds is not timed at the clock's grain;
- on CUDA, :func:`time_calls_events` also records a ``torch.cuda.Event`` pair on the runner's stream around each
  call: host latency (wall clock, what a caller waits) and GPU compute time (events) side by side, trtexec-style;
- the garbage collector is paused while timing, so a collection does not land in one sample, and from the first
  warm-up on glibc's malloc keeps freed blocks (:func:`taslora_core.heap.keep_freed_memory`), so that runners
  alternating in one process do not page-fault their temporaries in on every call;
- A/B comparisons interleave the two runners and alternate which goes first in each pair, so that drift of
  the machine (clock, load, caches) hits both sides alike; the ratio is taken per pair. The order can also be
  drawn at random in balanced blocks (:func:`balanced_order`), so no periodic disturbance can line up with it;
- :func:`time_until_known` times one runner for a budget instead of a fixed count: autorange, then samples until
  the statistic's own 95% interval (distribution-free, from order statistics) is within +-``rel_half_width`` or
  a cap (seconds, samples) is reached (latency lookups, `latency fit`, search verification);
  :func:`ratio_until_known` does the same for the per-pair ratio of a runner against a reference (`latency fit`'s
  passes: a ratio survives a machine whose speed changes between seconds, a single time does not);
- :func:`sequential_pairs` adds pairs until a decision rule is satisfied at one of a planned list of looks, the
  planned pairs are measured or a time limit passes (the latency test of :mod:`taslora_deploy.certificate.latency`);
- the per-pair ratio ``tb[i] / ta[i]`` is formed in one place (:func:`pair_log_ratios`), and
  :func:`pair_ratio_stats` is the one summary of paired timings (spread of each side, the ratios' median and
  percentiles, the ratio of medians).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from taslora_core.heap import keep_freed_memory

__all__ = ["Runner", "MIN_SAMPLE_S", "synchronize", "torch_threads", "warm_up", "autorange", "sample_timer",
           "pair_autorange", "time_calls", "time_calls_events", "time_pairs", "time_pairs_events", "balanced_order",
           "SequentialPairs", "sequential_pairs", "latency_stats", "interleaved_latency", "pair_log_ratios",
           "pair_ratio_stats", "KnownTiming", "statistic_half_width", "time_until_known", "ratio_until_known"]

Runner = Callable[[], Any]
"""One inference per call; returns when its work is finished."""

_TINY_S = 1e-12  # perf_counter resolution guard for ratios
MIN_SAMPLE_S = 2e-4
"""The shortest timed sample :func:`autorange` accepts: ~0.2 ms is a few thousand ticks of ``perf_counter`` and
long against the loop's own overhead (~1 us), so a sample measures the model, not the clock."""
_AUTORANGE_MAX = 10 ** 6


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (unchanged when None), restoring it afterwards."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def _gc_paused(collect: bool = False) -> Iterator[None]:
    keep_freed_memory()
    was_enabled = gc.isenabled()
    if collect:  # costs up to ~0.5 s with torch loaded on a busy machine: only before long A/B runs
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def warm_up(runners: Sequence[Runner], seconds: float = 0.0, min_calls: int = 1) -> int:
    """Call the runners in turn, at least ``min_calls`` rounds and until ``seconds`` passed; returns the rounds."""
    keep_freed_memory()
    perf = time.perf_counter
    end = perf() + max(float(seconds), 0.0)
    rounds = 0
    while rounds < min_calls or perf() < end:
        for run in runners:
            run()
        rounds += 1
    return rounds


def _timed(run: Runner, inner: int) -> float:
    perf = time.perf_counter
    t0 = perf()
    for _ in range(inner):
        run()
    return (perf() - t0) / inner


def autorange(sample_s: Callable[[int], float], min_sample_s: float = MIN_SAMPLE_S) -> tuple[int, float]:
    """(k, seconds of one k-call sample): the smallest k of 1, 2, 5, 10, 20, 50, ... whose sample lasts at least
    ``min_sample_s`` (the rule of :meth:`timeit.Timer.autorange`). ``sample_s(k)`` times one sample of k calls on
    the clock the measurement uses (:func:`sample_timer`) and returns its seconds (not per call)."""
    k = 1
    while True:
        for step in (1, 2, 5):
            inner = k * step
            took = float(sample_s(inner))
            if took >= min_sample_s or inner >= _AUTORANGE_MAX:
                return inner, took
        k *= 10


def sample_timer(run: Runner, stream: Any = None, make_event: Callable[[], Any] | None = None) -> Callable[[int], float]:
    """``k -> seconds`` of one sample of ``k`` calls of ``run``: the host wall clock, or with ``stream`` the GPU
    time between a CUDA event pair recorded on it (``make_event`` as in :func:`time_calls_events`)."""
    if stream is None:
        return lambda k: _timed(run, k) * k
    make = make_event or _cuda_timing_event

    def on_events(k: int) -> float:
        begin, end = make(), make()
        begin.record(stream)
        for _ in range(k):
            run()
        end.record(stream)
        end.synchronize()
        return begin.elapsed_time(end) / 1e3

    return on_events


def pair_autorange(run_a: Runner, run_b: Runner, streams: tuple[Any, Any] | None = None,
                   make_event: Callable[[], Any] | None = None, min_sample_s: float = MIN_SAMPLE_S) -> tuple[int, float]:
    """(k, seconds of one k-call sample of the slower side): :func:`autorange` for A/B pairs, so that the samples
    of both runners last at least ``min_sample_s`` on the clock used (CUDA events with ``streams``)."""
    timers = [sample_timer(run, None if streams is None else stream, make_event)
              for run, stream in zip((run_a, run_b), streams or (None, None))]
    k, _ = autorange(lambda inner: min(t(inner) for t in timers), min_sample_s)
    return k, max(t(k) for t in timers)


def _sample_until(take_sample: Callable[[], None], count: Callable[[], int], min_iters: int,
                  min_time_s: float) -> None:
    """Call ``take_sample`` until at least ``min_iters`` samples and ``min_time_s`` seconds (gc paused)."""
    perf = time.perf_counter
    with _gc_paused():
        start = perf()
        while count() < min_iters or perf() - start < min_time_s:
            take_sample()


def time_calls(run: Runner, min_iters: int, min_time_s: float = 0.0, inner: int = 1) -> np.ndarray:
    """Seconds per call of at least ``min_iters`` samples, sampling until ``min_time_s`` of timed calls passed."""
    if min_iters < 1 or inner < 1:
        raise ValueError("min_iters and inner must be >= 1")
    times: list[float] = []
    _sample_until(lambda: times.append(_timed(run, inner)), times.__len__, min_iters, min_time_s)
    return np.asarray(times, dtype=np.float64)


STOP_QUANTILE = {"median": 0.5, "min": 0.1}
"""The quantile whose 95% interval decides when a statistic is known. The minimum has no interval of its own
(it only falls), so ``min`` stops when the fastest tenth of the samples agree: the interval of the 10th
percentile, from the fastest sample up, is within the tolerance."""
_Z95 = 1.96


def statistic_half_width(times_s: Sequence[float] | np.ndarray, statistic: str) -> float:
    """Half the width of the 95% interval of ``statistic`` ('median' or 'min') relative to its value: the
    distribution-free interval of the quantile of :data:`STOP_QUANTILE` between two order statistics (binomial
    ranks, normal approximation); for 'min' the interval starts at the fastest sample. ``inf`` with < 2 samples."""
    x = np.sort(np.asarray(times_s, dtype=np.float64))
    n = x.size
    if n < 2:
        return math.inf
    q = STOP_QUANTILE[statistic]
    spread = _Z95 * math.sqrt(n * q * (1 - q))
    hi = x[min(n - 1, math.ceil(n * q + spread))]
    lo = x[0] if statistic == "min" else x[max(0, math.floor(n * q - spread) - 1)]
    value = x[0] if statistic == "min" else float(np.median(x))
    return float((hi - lo) / (2 * max(value, _TINY_S)))


@dataclass
class KnownTiming:
    """What :func:`time_until_known` or :func:`ratio_until_known` measured: seconds per call of each sample,
    calls per sample (``inner``), why it stopped ("known", "time cap" or "sample cap"), the interval's relative
    half-width then, and the seconds the samples took (autorange excluded). A paired timing also holds the
    reference's seconds per call of each pair (``reference``); its statistic is then the ratio's."""

    times: np.ndarray
    inner: int
    stopped: str
    half_width: float
    seconds: float
    reference: np.ndarray | None = None

    @property
    def samples(self) -> int:
        """How many samples (pairs, when paired) were timed."""
        return int(self.times.size)

    @property
    def ratio(self) -> float:
        """Median of the per-pair ratios run / reference (:func:`pair_log_ratios`); paired timings only."""
        if self.reference is None:
            raise ValueError("ratio needs a paired timing (ratio_until_known)")
        return float(np.exp(np.median(pair_log_ratios(self.reference, self.times))))


def _check_stopping(statistic: str, rel_half_width: float, max_samples: int, min_samples: int) -> None:
    """Raise ValueError for arguments :func:`_sample_until_known` cannot stop on (checked before any call runs)."""
    if statistic not in STOP_QUANTILE:
        raise ValueError(f"statistic must be one of {', '.join(STOP_QUANTILE)}, got {statistic!r}")
    if min_samples < 2 or max_samples < min_samples or rel_half_width <= 0:
        raise ValueError("need 2 <= min_samples <= max_samples and rel_half_width > 0")


def _sample_until_known(take: Callable[[], float], statistic: str, rel_half_width: float, max_time_s: float,
                        max_samples: int, min_samples: int) -> tuple[np.ndarray, str, float, float]:
    """(samples, why it stopped, half-width, seconds): call ``take`` for one sample each until the ``statistic``
    of the samples is known within +-``rel_half_width`` (:func:`statistic_half_width`, after ``min_samples``) or
    a cap is reached; gc paused. The one stopping rule of :func:`time_until_known` and :func:`ratio_until_known`
    (arguments checked by :func:`_check_stopping`)."""
    perf = time.perf_counter
    values: list[float] = []
    half, stopped = math.inf, ""
    with _gc_paused():
        start = perf()
        while not stopped:
            values.append(take())
            n = len(values)
            if n >= min_samples and (n < 64 or n % 8 == 0):  # sorting each sample is cheap up to here
                half = statistic_half_width(values, statistic)
                if half <= rel_half_width:
                    stopped = "known"
            if not stopped and n >= max_samples:
                stopped = "sample cap"
            elif not stopped and n >= min_samples and perf() - start >= max_time_s:
                stopped = "time cap"
        seconds = perf() - start
    if stopped != "known":
        half = statistic_half_width(values, statistic)
    return np.asarray(values, dtype=np.float64), stopped, half, seconds


def time_until_known(run: Runner, statistic: str = "min", rel_half_width: float = 0.02, max_time_s: float = 0.25,
                     max_samples: int = 2000, min_samples: int = 5,
                     min_sample_s: float = MIN_SAMPLE_S) -> KnownTiming:
    """Time ``run`` until its ``statistic`` is known: :func:`autorange` the calls per sample, then take samples
    (gc paused) until :func:`statistic_half_width` is at most ``rel_half_width`` (after ``min_samples``), or
    ``max_samples`` samples or ``max_time_s`` seconds of sampling are reached (at least ``min_samples`` samples
    are always taken). A quiet machine stops after a few milliseconds; a noisy one runs to a cap and says so."""
    _check_stopping(statistic, rel_half_width, max_samples, min_samples)
    inner, _ = autorange(sample_timer(run), min_sample_s)
    times, stopped, half, seconds = _sample_until_known(lambda: _timed(run, inner), statistic, rel_half_width,
                                                        max_time_s, max_samples, min_samples)
    return KnownTiming(times, inner, stopped, half, seconds)


def ratio_until_known(reference: Runner, run: Runner, rel_half_width: float = 0.02, max_time_s: float = 0.25,
                      max_samples: int = 2000, min_samples: int = 5,
                      min_sample_s: float = MIN_SAMPLE_S) -> KnownTiming:
    """Time ``run`` against ``reference`` in interleaved pairs (AB, BA, AB, ...; :func:`pair_autorange` calls per
    sample) until the median of the per-pair ratios run / reference is known within +-``rel_half_width`` (95%)
    or a cap is reached, like :func:`time_until_known`. A machine whose speed changes from one second to the next
    (another process's phases) changes both sides of a pair alike, so the ratio holds where either time alone
    does not. ``times``/``reference``: seconds per call of each side; :attr:`KnownTiming.ratio` the statistic."""
    _check_stopping("median", rel_half_width, max_samples, min_samples)
    inner, _ = pair_autorange(reference, run, min_sample_s=min_sample_s)
    ref_times: list[float] = []
    run_times: list[float] = []

    def pair() -> float:
        if len(ref_times) % 2 == 0:  # AB, BA, AB, ...
            ref_times.append(_timed(reference, inner))
            run_times.append(_timed(run, inner))
        else:
            run_times.append(_timed(run, inner))
            ref_times.append(_timed(reference, inner))
        return run_times[-1] / max(ref_times[-1], _TINY_S)

    _ratios, stopped, half, seconds = _sample_until_known(pair, "median", rel_half_width, max_time_s, max_samples,
                                                          min_samples)
    return KnownTiming(np.asarray(run_times, dtype=np.float64), inner, stopped, half, seconds,
                       reference=np.asarray(ref_times, dtype=np.float64))


def _cuda_timing_event() -> Any:
    return torch.cuda.Event(enable_timing=True)


def time_calls_events(run: Runner, stream: Any, min_iters: int, min_time_s: float = 0.0,
                      make_event: Callable[[], Any] = _cuda_timing_event) -> tuple[np.ndarray, np.ndarray]:
    """Host seconds per call (wall clock) and GPU seconds per call (an event pair recorded on ``stream``).

    The events are recorded around each call without synchronising on them inside the loop; their times are
    read once at the end. ``make_event`` returns an object with ``record(stream)``, ``synchronize()`` and
    ``elapsed_time(end) -> ms`` (``torch.cuda.Event(enable_timing=True)``; tests pass a fake).
    """
    if min_iters < 1:
        raise ValueError("min_iters must be >= 1")
    host: list[float] = []
    events: list[tuple[Any, Any]] = []

    def sample() -> None:
        begin, end = make_event(), make_event()
        begin.record(stream)
        host.append(_timed(run, 1))
        end.record(stream)
        events.append((begin, end))

    _sample_until(sample, host.__len__, min_iters, min_time_s)
    events[-1][1].synchronize()
    gpu = [begin.elapsed_time(end) / 1e3 for begin, end in events]
    return np.asarray(host, dtype=np.float64), np.asarray(gpu, dtype=np.float64)


def _alternating(iters: int) -> np.ndarray:
    return np.arange(iters) % 2 == 0


def balanced_order(pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Which runner goes first in each of ``pairs`` pairs (True: A): blocks of two pairs, (AB, BA) or (BA, AB)
    drawn at random, so either side goes first equally often and the order has no period to resonate with."""
    if pairs < 0:
        raise ValueError("pairs must be >= 0")
    blocks = rng.integers(0, 2, size=(pairs + 1) // 2).astype(bool)
    return np.stack([blocks, ~blocks], axis=1).reshape(-1)[:pairs]


def time_pairs(run_a: Runner, run_b: Runner, iters: int, inner: int = 1, a_first: np.ndarray | None = None,
               collect: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Seconds per call of A and B over ``iters`` interleaved pairs (AB, BA, AB, ... unless ``a_first`` says
    which side goes first in each pair). ``collect``: run the garbage collector once before timing."""
    if iters < 1 or inner < 1:
        raise ValueError("iters and inner must be >= 1")
    order = _alternating(iters) if a_first is None else np.asarray(a_first, dtype=bool)
    if order.shape != (iters,):
        raise ValueError(f"a_first must hold one flag per pair ({iters}), got shape {order.shape}")
    ta, tb = np.empty(iters), np.empty(iters)
    with _gc_paused(collect=collect):
        for i in range(iters):
            if order[i]:
                ta[i] = _timed(run_a, inner)
                tb[i] = _timed(run_b, inner)
            else:
                tb[i] = _timed(run_b, inner)
                ta[i] = _timed(run_a, inner)
    return ta, tb


def time_pairs_events(run_a: Runner, run_b: Runner, stream_a: Any, stream_b: Any, iters: int,
                      a_first: np.ndarray | None = None,
                      make_event: Callable[[], Any] | None = None, inner: int = 1) -> tuple[np.ndarray, ...]:
    """Interleaved pairs on CUDA: (host A, host B, GPU A, GPU B) seconds per call; the GPU times come from an
    event pair recorded on each runner's stream around each sample of ``inner`` calls (read once at the end, as
    in :func:`time_calls_events`; ``make_event`` defaults to ``torch.cuda.Event(enable_timing=True)``)."""
    if iters < 1 or inner < 1:
        raise ValueError("iters and inner must be >= 1")
    make_event = make_event or _cuda_timing_event
    order = _alternating(iters) if a_first is None else np.asarray(a_first, dtype=bool)
    host = {"a": np.empty(iters), "b": np.empty(iters)}
    events: dict[str, list[tuple[Any, Any]]] = {"a": [], "b": []}
    sides = {"a": (run_a, stream_a), "b": (run_b, stream_b)}

    def one(side: str, i: int) -> None:
        run, stream = sides[side]
        begin, end = make_event(), make_event()
        begin.record(stream)
        host[side][i] = _timed(run, inner)
        end.record(stream)
        events[side].append((begin, end))

    with _gc_paused():
        for i in range(iters):
            for side in (("a", "b") if order[i] else ("b", "a")):
                one(side, i)
    for side in ("a", "b"):
        events[side][-1][1].synchronize()
    gpu = {side: np.asarray([b.elapsed_time(e) / 1e3 / inner for b, e in events[side]]) for side in ("a", "b")}
    return host["a"], host["b"], gpu["a"], gpu["b"]


@dataclass
class SequentialPairs:
    """What :func:`sequential_pairs` measured: the pairs, the pair counts at which the rule was consulted, why it
    stopped ("decided", "time limit" or "planned pairs") and the wall-clock seconds it took."""

    ta: np.ndarray
    tb: np.ndarray
    looks: list[int] = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0


def sequential_pairs(measure: Callable[[int], tuple[np.ndarray, np.ndarray]],
                     decided: Callable[[np.ndarray, np.ndarray, bool], bool], looks: Sequence[int],
                     time_limit_s: float = 3.0, chunk: int = 16) -> SequentialPairs:
    """Measure pairs until ``decided(ta, tb, final)`` holds at one of the planned ``looks`` (ascending pair counts;
    the last is the plan's total), the planned pairs are measured or ``time_limit_s`` seconds passed.

    ``measure(k)`` times ``k`` more pairs and returns their (A, B) seconds. The rule is consulted at each planned
    count, and once more, as the final look, with whatever was measured when the time limit strikes (``final`` is
    True at the last planned look and at that one): when the looks happen depends on the clock and the plan only,
    never on the timings, which is what lets an alpha-spending rule bound its error over all looks. Pairs are
    measured ``chunk`` at a time, so the time limit is honoured even when one look's pairs would take long; at
    least two pairs are always measured.
    """
    plan = [int(n) for n in looks]
    if not plan or plan[0] < 2 or any(b <= a for a, b in zip(plan, plan[1:])) or chunk < 1:
        raise ValueError(f"looks must be increasing pair counts >= 2, got {plan}")
    perf = time.perf_counter
    parts_a: list[np.ndarray] = []
    parts_b: list[np.ndarray] = []
    result = SequentialPairs(np.empty(0), np.empty(0))
    count = 0
    with _gc_paused():  # no collection first: a full collection can take seconds on a loaded machine
        start = perf()
        for target in plan:
            while count < target and (count < 2 or perf() - start < time_limit_s):
                in_time = perf() - start < time_limit_s
                a, b = measure(min(chunk, target - count) if in_time else 2 - count)
                parts_a.append(a)
                parts_b.append(b)
                count += len(a)
            out_of_time = count < target or perf() - start >= time_limit_s
            final = out_of_time or target == plan[-1]
            result.ta, result.tb = np.concatenate(parts_a), np.concatenate(parts_b)
            result.looks.append(count)
            if decided(result.ta, result.tb, final):
                result.stopped = "decided"
                break
            if final:
                result.stopped = "time limit" if out_of_time else "planned pairs"
                break
    result.seconds = perf() - start
    return result


# --------------------------------------------------------------------------- statistics


def latency_stats(times_s: Sequence[float] | np.ndarray, batch: int) -> dict[str, float]:
    """trtexec-style statistics (ms) of per-call wall times in seconds, and throughput for ``batch`` images.

    ``throughput_qps`` counts queries (calls, one batch each) per second of timed calls, as trtexec's
    "Throughput: X qps"; ``throughput_ips`` = ``batch`` x ``throughput_qps`` (images per second).
    """
    t = np.asarray(times_s, dtype=np.float64) * 1e3
    if t.size == 0:
        raise ValueError("no timings")
    p10, p50, p90, p95, p99 = np.percentile(t, [10, 50, 90, 95, 99])
    mean = float(t.mean())
    std = float(t.std(ddof=1)) if t.size > 1 else 0.0
    total_s = float(t.sum() / 1e3)
    return {
        "iters": int(t.size),
        "total_s": total_s,
        "mean_ms": mean,
        "median_ms": float(p50),
        "p10_ms": float(p10),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "min_ms": float(t.min()),
        "max_ms": float(t.max()),
        "std_ms": std,
        "cv": std / mean if mean > 0 else 0.0,
        "throughput_ips": float(batch * t.size / total_s) if total_s > 0 else 0.0,
        "throughput_qps": float(t.size / total_s) if total_s > 0 else 0.0,
    }


def _spread(values_ms: np.ndarray, side: str) -> dict[str, float]:
    q10, q25, q50, q75, q90 = np.percentile(values_ms, [10, 25, 50, 75, 90])
    return {
        f"median_{side}_ms": float(q50),
        f"mean_{side}_ms": float(values_ms.mean()),
        f"min_{side}_ms": float(values_ms.min()),
        f"p10_{side}_ms": float(q10),
        f"p90_{side}_ms": float(q90),
        f"iqr_{side}_ms": float(q75 - q25),
    }


def pair_log_ratios(ta_s: np.ndarray, tb_s: np.ndarray) -> np.ndarray:
    """``log(tb[i] / ta[i])`` of paired timings (both sides guarded against a zero reading): THE per-pair ratio."""
    ta, tb = np.asarray(ta_s, dtype=np.float64), np.asarray(tb_s, dtype=np.float64)
    if ta.shape != tb.shape or ta.ndim != 1 or ta.size < 1:
        raise ValueError(f"need two equally long 1-D arrays of paired timings, got {ta.shape} and {tb.shape}")
    return np.log(np.maximum(tb, _TINY_S) / np.maximum(ta, _TINY_S))


def pair_ratio_stats(ta_s: np.ndarray, tb_s: np.ndarray) -> dict[str, float]:
    """THE summary of paired timings: spread of A and B (ms) and of the per-pair ratios B/A (``ratio_median`` =
    exp of the median log-ratio, the statistic the certificate decides on; p10, p90, IQR) and the ratio of
    medians ``median(B) / median(A)``."""
    ratios = np.exp(pair_log_ratios(ta_s, tb_s))
    r10, r25, r75, r90 = np.percentile(ratios, [10, 25, 75, 90])
    a_ms, b_ms = np.asarray(ta_s, dtype=np.float64) * 1e3, np.asarray(tb_s, dtype=np.float64) * 1e3
    return {
        **_spread(a_ms, "a"),
        **_spread(b_ms, "b"),
        "ratio_median": float(np.exp(np.median(np.log(ratios)))),
        "ratio_p10": float(r10),
        "ratio_p90": float(r90),
        "ratio_iqr": float(r75 - r25),
        "ratio_of_medians": float(max(np.median(b_ms), _TINY_S) / max(np.median(a_ms), _TINY_S)),
    }


def interleaved_latency(run_a: Runner, run_b: Runner, warmup_s: float = 1.0, iters: int = 200, inner: int = 1) -> dict:
    """Time two runners alternately (pairs AB, BA, AB, ...) after an alternating warm-up.

    Report keys: ``median_a_ms``, ``median_b_ms`` (plus mean/min/p10/p90/iqr for each), ``ratio_median``
    (median of per-pair ratios B/A), ``ratio_p10``, ``ratio_p90``, ``ratio_iqr``, ``ratio_of_medians``,
    ``iters``, ``inner``, ``warmup_s``, ``warmup_pairs``.
    """
    if iters < 1 or inner < 1:
        raise ValueError("iters and inner must be >= 1")
    warm_pairs = warm_up([run_a, run_b], seconds=warmup_s)
    ta, tb = time_pairs(run_a, run_b, iters, inner)
    return {"iters": int(iters), "inner": int(inner), "warmup_s": float(warmup_s), "warmup_pairs": warm_pairs,
            **pair_ratio_stats(ta, tb)}
