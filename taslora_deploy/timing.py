"""Wall-clock timing of zero-argument runners: the one timing loop of `bench`, `check-overhead` and latency lookups.

A runner is a callable that does one inference and returns when it is done: it synchronises its own device
(:func:`synchronize` for torch on CUDA; onnxruntime and TensorRT runners block until their outputs exist).
Every timed loop here follows the same rules:

- warm-up first (lazy initialisation, autotuning, compilation): at least ``min_calls`` rounds and until
  ``seconds`` have passed;
- each sample is ``time.perf_counter`` around ``inner`` consecutive calls, divided by ``inner`` (the clock is looked
  up at call time, so tests replace ``time.perf_counter`` with a controlled clock);
- on CUDA, :func:`time_calls_events` also records a ``torch.cuda.Event`` pair on the runner's stream around each
  call: host latency (wall clock, what a caller waits) and GPU compute time (events) side by side, trtexec-style;
- the garbage collector is paused while timing, so a collection does not land in one sample;
- A/B comparisons interleave the two runners and alternate which goes first in each pair, so that drift of
  the machine (clock, load, caches) hits both sides alike; the ratio is taken per pair. The order can also be
  drawn at random in balanced blocks (:func:`balanced_order`), so no periodic disturbance can line up with it;
- :func:`sequential_pairs` adds pairs in growing rounds until a decision rule is satisfied, a pair budget is
  spent or a time limit passes (the equivalence test of :mod:`taslora_deploy.certificate.latency`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Runner", "synchronize", "torch_threads", "warm_up", "time_calls", "time_calls_events", "time_pairs",
           "time_pairs_events", "balanced_order", "SequentialPairs", "sequential_pairs", "latency_stats",
           "interleaved_latency", "pair_ratio_stats"]

Runner = Callable[[], Any]
"""One inference per call; returns when its work is finished."""

_TINY_S = 1e-12  # perf_counter resolution guard for ratios


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
                      make_event: Callable[[], Any] | None = None) -> tuple[np.ndarray, ...]:
    """Interleaved pairs on CUDA: (host A, host B, GPU A, GPU B) seconds per call; the GPU times come from an
    event pair recorded on each runner's stream around each call (read once at the end, as in
    :func:`time_calls_events`; ``make_event`` defaults to ``torch.cuda.Event(enable_timing=True)``)."""
    if iters < 1:
        raise ValueError("iters must be >= 1")
    make_event = make_event or _cuda_timing_event
    order = _alternating(iters) if a_first is None else np.asarray(a_first, dtype=bool)
    host = {"a": np.empty(iters), "b": np.empty(iters)}
    events: dict[str, list[tuple[Any, Any]]] = {"a": [], "b": []}
    sides = {"a": (run_a, stream_a), "b": (run_b, stream_b)}

    def one(side: str, i: int) -> None:
        run, stream = sides[side]
        begin, end = make_event(), make_event()
        begin.record(stream)
        host[side][i] = _timed(run, 1)
        end.record(stream)
        events[side].append((begin, end))

    with _gc_paused():
        for i in range(iters):
            for side in (("a", "b") if order[i] else ("b", "a")):
                one(side, i)
    for side in ("a", "b"):
        events[side][-1][1].synchronize()
    gpu = {side: np.asarray([b.elapsed_time(e) / 1e3 for b, e in events[side]]) for side in ("a", "b")}
    return host["a"], host["b"], gpu["a"], gpu["b"]


@dataclass
class SequentialPairs:
    """What :func:`sequential_pairs` measured: the pairs, the pair counts at which the rule was consulted, why it
    stopped ("decided", "time limit" or "max pairs") and the seconds it took."""

    ta: np.ndarray
    tb: np.ndarray
    looks: list[int] = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0


def sequential_pairs(measure: Callable[[int], tuple[np.ndarray, np.ndarray]],
                     decided: Callable[[np.ndarray, np.ndarray], bool], first: int = 100, max_pairs: int = 4000,
                     time_limit_s: float = 3.0, growth: float = 2.0, chunk: int = 16) -> SequentialPairs:
    """Measure pairs in rounds of growing size until ``decided(ta, tb)`` holds, ``max_pairs`` are measured or
    ``time_limit_s`` seconds passed.

    ``measure(k)`` times ``k`` more pairs and returns their (A, B) seconds. The rule is consulted ("a look") once
    ``first`` pairs exist, then whenever the count has grown by ``growth`` times, and once more with whatever was
    measured when the time limit strikes: a few looks (about log2(max_pairs / first)), so the chance that one of
    them errs stays close to that of a single test. Pairs are measured ``chunk`` at a time, so the time limit is
    honoured even when one round would take long (a slow model: the first look may then have fewer pairs); at
    least two pairs are always measured.
    """
    if first < 2 or max_pairs < first or growth <= 1.0 or chunk < 1:
        raise ValueError(f"need 2 <= first <= max_pairs and growth > 1, got first={first}, max_pairs={max_pairs}, "
                         f"growth={growth}")
    perf = time.perf_counter
    parts_a: list[np.ndarray] = []
    parts_b: list[np.ndarray] = []
    result = SequentialPairs(np.empty(0), np.empty(0))
    count, target = 0, first
    with _gc_paused(collect=True):
        start = perf()  # after the collection, which can take a second on a loaded machine
        while True:
            while count < target and (count < 2 or perf() - start < time_limit_s):
                in_time = perf() - start < time_limit_s
                a, b = measure(min(chunk, target - count) if in_time else 2 - count)
                parts_a.append(a)
                parts_b.append(b)
                count += len(a)
            out_of_time = perf() - start >= time_limit_s
            result.ta, result.tb = np.concatenate(parts_a or [np.empty(0)]), np.concatenate(parts_b or [np.empty(0)])
            if count >= 2 and (not result.looks or count > result.looks[-1]):
                result.looks.append(count)
                if decided(result.ta, result.tb):
                    result.stopped = "decided"
                    break
            if out_of_time or count >= max_pairs:
                result.stopped = "time limit" if out_of_time else "max pairs"
                break
            target = min(max_pairs, max(target + 1, int(round(target * growth))))
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


def pair_ratio_stats(ta_s: np.ndarray, tb_s: np.ndarray) -> dict[str, float]:
    """Spread of A and B (ms) and of the per-pair ratios B/A (median, p10, p90, IQR, ratio of medians)."""
    ratios = np.maximum(tb_s, _TINY_S) / np.maximum(ta_s, _TINY_S)
    r10, r25, r50, r75, r90 = np.percentile(ratios, [10, 25, 50, 75, 90])
    a_ms, b_ms = ta_s * 1e3, tb_s * 1e3
    return {
        **_spread(a_ms, "a"),
        **_spread(b_ms, "b"),
        "ratio_median": float(r50),
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
