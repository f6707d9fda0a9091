"""Measuring until the number is known (`taslora_deploy.timing.time_until_known`, `ratio_until_known`) on a clock
that moves only when the runner runs: it stops early when the samples agree, runs to a cap when they do not, and
records the count; a ratio against a reference survives a machine whose speed changes, a single time does not."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from taslora_deploy.timing import ratio_until_known, statistic_half_width, time_until_known


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    return now


def _runner(clock: list[float], costs):
    """A runner whose n-th call advances the clock by the n-th of `costs` (an iterator of seconds)."""
    it = iter(costs)

    def run():
        clock[0] += next(it)

    return run


def _forever(draw):
    while True:
        yield draw()


def test_half_width_of_agreeing_and_spread_samples():
    assert statistic_half_width([1.0] * 20, "median") == 0.0
    assert statistic_half_width([1.0], "min") == math.inf
    spread = np.linspace(1.0, 2.0, 20)
    assert statistic_half_width(spread, "median") > 0.1
    # min: only the fastest tenth matters, so a slow tail does not widen it
    tail = np.concatenate([np.full(15, 1.0), np.linspace(2.0, 5.0, 5)])
    assert statistic_half_width(tail, "min") == 0.0 and statistic_half_width(tail, "median") > 0.4
    assert statistic_half_width(np.concatenate([np.full(5, 1.0), np.full(15, 3.0)]), "median") == pytest.approx(1 / 3)


@pytest.mark.parametrize("statistic", ["min", "median"])
def test_stops_after_the_minimum_samples_when_they_agree(clock, statistic):
    rng = np.random.default_rng(0)
    timing = time_until_known(_runner(clock, _forever(lambda: 1e-3 * (1 + 1e-4 * rng.random()))), statistic,
                              max_time_s=10.0, min_samples=5)
    assert timing.stopped == "known" and timing.samples == 5 and timing.inner == 1
    assert timing.half_width <= 0.02 and timing.times.mean() == pytest.approx(1e-3, rel=1e-3)


def test_autoranges_calls_per_sample_for_a_fast_model(clock):
    timing = time_until_known(_runner(clock, _forever(lambda: 3e-5)), max_time_s=10.0)
    assert timing.inner == 10 and timing.stopped == "known"  # 10 x 30 us >= 0.2 ms
    assert timing.times.tolist() == pytest.approx([3e-5] * timing.samples)


def test_runs_to_the_time_cap_when_noisy_and_records_the_count(clock):
    rng = np.random.default_rng(1)
    timing = time_until_known(_runner(clock, _forever(lambda: 1e-3 * (1 + rng.random()))), "median",
                              max_time_s=0.2, max_samples=10_000)
    assert timing.stopped == "time cap" and timing.half_width > 0.02
    assert 100 <= timing.samples <= 200 and timing.seconds >= 0.2  # 1-2 ms per sample, 0.2 s of them


def test_runs_to_the_sample_cap(clock):
    rng = np.random.default_rng(2)
    timing = time_until_known(_runner(clock, _forever(lambda: 1e-3 * (1 + rng.random()))), "median",
                              max_time_s=100.0, max_samples=40)
    assert timing.stopped == "sample cap" and timing.samples == 40


def test_min_is_known_sooner_than_the_median_under_a_heavy_tail(clock):
    """A shared machine: most calls run at full speed, some wait for a core. The fastest calls agree long before
    the median settles, which is why `min` is the default statistic."""
    rng = np.random.default_rng(3)

    def draw():
        return 1e-3 * (1 + 1e-3 * rng.random()) * (1 if rng.random() < 0.6 else 1 + 3 * rng.random())

    known = {s: time_until_known(_runner(clock, _forever(draw)), s, max_time_s=1.0, max_samples=10_000)
             for s in ("min", "median")}
    assert known["min"].stopped == "known"
    assert known["min"].samples < known["median"].samples


def test_rejects_bad_arguments(clock):
    calls: list[int] = []
    with pytest.raises(ValueError):
        time_until_known(lambda: calls.append(1), "mean")
    with pytest.raises(ValueError):
        time_until_known(lambda: calls.append(1), min_samples=1)
    with pytest.raises(ValueError):
        ratio_until_known(lambda: calls.append(1), lambda: calls.append(1), min_samples=1)
    assert calls == []  # refused before anything runs


class _PhasedMachine:
    """A machine that runs `slow` times slower every other `phase` calls (another process's phases, slower than
    one pair of calls): runners made by `runner` advance the clock by their cost at the current speed."""

    def __init__(self, clock: list[float], phase: int = 6, slow: float = 1.8) -> None:
        self.clock, self.phase, self.slow, self.calls = clock, phase, slow, 0

    def runner(self, base_s: float):
        def run():
            self.clock[0] += base_s * (self.slow if (self.calls // self.phase) % 2 else 1.0)
            self.calls += 1

        return run


def test_ratio_against_a_reference_repeats_where_a_single_time_does_not(clock):
    """Phases of 40 calls: each timing is known within itself, but a single time depends on the phase it landed
    in (the between-pass spread of `latency fit`), while the ratio against a reference timed in pairs does not."""
    machine = _PhasedMachine(clock, phase=40)
    alone = [time_until_known(machine.runner(1e-3), "median", max_time_s=10.0, min_samples=5) for _ in range(8)]
    medians = [float(np.median(t.times)) for t in alone]
    assert all(t.stopped == "known" for t in alone) and max(medians) / min(medians) == pytest.approx(1.8)
    paired = [ratio_until_known(machine.runner(5e-4), machine.runner(1e-3), max_time_s=10.0, min_samples=5)
              for _ in range(8)]
    assert all(t.stopped == "known" and t.ratio == pytest.approx(2.0, rel=0.02) for t in paired)
    references = np.concatenate([t.reference for t in paired])  # type: ignore[misc]
    assert set(np.round(references * 1e4, 6)) == {5.0, 9.0}  # the reference saw both speeds
    assert all(t.reference.shape == t.times.shape for t in paired)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="paired"):
        _ = alone[0].ratio
    # phases of 3 pairs, shorter than a timing: each ratio is taken against the reference of its own pair
    fast = _PhasedMachine(clock, phase=6)
    within = ratio_until_known(fast.runner(5e-4), fast.runner(1e-3), max_time_s=10.0, min_samples=30)
    assert within.stopped == "known" and within.samples == 30  # the stopping rule sees the same per-pair ratios
    assert within.ratio == pytest.approx(2.0, rel=1e-6) and set(np.round(within.reference * 1e4, 6)) == {5.0, 9.0}


def test_ratio_pairs_alternate_who_goes_first(clock):
    calls: list[str] = []

    def named(name: str, cost: float):
        def run():
            calls.append(name)
            clock[0] += cost

        return run

    timing = ratio_until_known(named("ref", 1e-3), named("run", 3e-3), min_samples=4, max_time_s=10.0)
    assert timing.inner == 1 and timing.samples == 4 and timing.ratio == pytest.approx(3.0)
    timed = calls[-8:]  # after pair_autorange's probes
    assert timed == ["ref", "run", "run", "ref", "ref", "run", "run", "ref"]
