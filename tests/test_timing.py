"""The one timing loop (taslora_deploy.timing) on a clock that moves only when a runner runs."""

from __future__ import annotations

import platform
import time

import numpy as np
import pytest
import torch

from taslora_deploy import timing
from taslora_deploy.timing import (autorange, balanced_order, interleaved_latency, latency_stats, pair_autorange,
                                   pair_log_ratios, pair_ratio_stats, sample_timer, sequential_pairs, time_calls,
                                   time_calls_events, time_pairs, time_pairs_events, torch_threads, warm_up)


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    return now


def _runner(clock: list[float], cost_s: float, calls: list[str], name: str):
    def run():
        calls.append(name)
        clock[0] += cost_s

    return run


def test_warm_up_runs_min_calls_then_until_the_time_passed(clock):
    calls: list[str] = []
    run = _runner(clock, 0.1, calls, "a")
    assert warm_up([run], seconds=0.0, min_calls=0) == 0 and calls == []
    assert warm_up([run], seconds=0.0, min_calls=3) == 3 and len(calls) == 3
    calls.clear()
    assert warm_up([run], seconds=0.45) == 5 and len(calls) == 5  # 0.1 s per call: 5 calls reach 0.5 s >= 0.45 s


def test_time_calls_meets_both_minimum_count_and_minimum_time(clock):
    calls: list[str] = []
    times = time_calls(_runner(clock, 0.01, calls, "a"), min_iters=3)
    assert times.tolist() == pytest.approx([0.01] * 3)
    times = time_calls(_runner(clock, 0.01, calls, "a"), min_iters=3, min_time_s=0.095)
    assert len(times) == 10  # the time bound, not the count, ends it
    times = time_calls(_runner(clock, 0.02, calls, "a"), min_iters=2, inner=4)
    assert times.tolist() == pytest.approx([0.02, 0.02])  # per call, not per sample of 4 calls
    with pytest.raises(ValueError):
        time_calls(lambda: None, min_iters=0)


def test_time_pairs_alternates_who_goes_first(clock):
    calls: list[str] = []
    ta, tb = time_pairs(_runner(clock, 0.001, calls, "a"), _runner(clock, 0.003, calls, "b"), iters=4)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert np.allclose(ta, 0.001) and np.allclose(tb, 0.003)


def test_time_pairs_follows_a_given_order(clock):
    calls: list[str] = []
    ta, tb = time_pairs(_runner(clock, 0.001, calls, "a"), _runner(clock, 0.003, calls, "b"), iters=3,
                        a_first=np.array([False, False, True]), collect=False)
    assert calls == ["b", "a", "b", "a", "a", "b"]
    assert np.allclose(ta, 0.001) and np.allclose(tb, 0.003)
    with pytest.raises(ValueError, match="one flag per pair"):
        time_pairs(lambda: None, lambda: None, iters=3, a_first=np.array([True]))


def test_balanced_order_is_random_but_balanced_in_blocks_of_two():
    order = balanced_order(1000, np.random.default_rng(0))
    assert order.shape == (1000,) and order.sum() == 500
    assert (order[0::2] != order[1::2]).all()  # each block of two pairs: AB then BA, or BA then AB
    assert 200 < (order[0::2]).sum() < 300  # which block comes is drawn (not a fixed alternation)
    assert not np.array_equal(order, balanced_order(1000, np.random.default_rng(1)))
    assert balanced_order(3, np.random.default_rng(0)).shape == (3,)


def test_sequential_pairs_looks_at_the_planned_counts_and_stops_when_decided(clock):
    """Looks planned at 10, 20, 40 pairs; the rule says yes at the third look, which is the final one."""
    calls: list[str] = []
    run_a, run_b = _runner(clock, 0.001, calls, "a"), _runner(clock, 0.001, calls, "b")
    seen: list[tuple[int, bool]] = []

    def decided(ta, tb, final) -> bool:
        seen.append((len(ta), final))
        return len(ta) >= 40

    seq = sequential_pairs(lambda k: time_pairs(run_a, run_b, k, collect=False), decided, looks=[10, 20, 40],
                           time_limit_s=100.0, chunk=4)
    assert seen == [(10, False), (20, False), (40, True)] and seq.looks == [10, 20, 40] and seq.stopped == "decided"
    assert len(seq.ta) == len(seq.tb) == 40 and len(calls) == 80
    assert seq.seconds == pytest.approx(0.08)
    with pytest.raises(ValueError, match="increasing"):
        sequential_pairs(lambda k: None, decided, looks=[20, 10])


def test_sequential_pairs_honours_the_time_limit_and_the_plan(clock):
    calls: list[str] = []
    run_a, run_b = _runner(clock, 0.01, calls, "a"), _runner(clock, 0.01, calls, "b")
    measure = lambda k: time_pairs(run_a, run_b, k, collect=False)  # noqa: E731
    finals: list[bool] = []
    never = lambda ta, tb, final: finals.append(final) or False  # noqa: E731
    seq = sequential_pairs(measure, never, looks=[10, 20, 40, 80], time_limit_s=1.0, chunk=5)
    # 0.02 s per pair: 50 pairs fill the second, measured in chunks of 5: looks at 10, 20, 40, then 50 at the limit
    assert seq.stopped == "time limit" and seq.looks == [10, 20, 40, 50] and seq.seconds == pytest.approx(1.0)
    assert finals == [False, False, False, True]  # the look the time limit forces is the final one
    seq = sequential_pairs(measure, never, looks=[10, 20, 30], time_limit_s=100.0)
    assert seq.stopped == "planned pairs" and seq.looks == [10, 20, 30]
    seq = sequential_pairs(measure, never, looks=[10, 30], time_limit_s=0.0)
    assert seq.looks == [2] and len(seq.ta) == 2  # out of time at once: still two pairs to look at


def test_autorange_takes_the_first_of_1_2_5_10_whose_sample_lasts_long_enough(clock):
    calls: list[str] = []
    run = _runner(clock, 20e-6, calls, "a")  # a 20 us model
    k, took = autorange(sample_timer(run))
    assert k == 10 and took == pytest.approx(2e-4)  # 10 calls = 0.2 ms
    assert autorange(sample_timer(_runner(clock, 1e-3, calls, "b")))[0] == 1  # a 1 ms model: one call per sample
    assert autorange(sample_timer(_runner(clock, 30e-6, calls, "c")), min_sample_s=1e-3)[0] == 50
    k, slower = pair_autorange(_runner(clock, 20e-6, calls, "a"), _runner(clock, 45e-6, calls, "b"))
    assert k == 10 and slower == pytest.approx(4.5e-4)  # both samples >= 0.2 ms: the faster side decides k
    gpu, streams = [0.0], []

    def on_gpu():
        clock[0] += 50e-6  # host time: launch overhead
        gpu[0] += 30e-6  # GPU time
    k, took = autorange(sample_timer(on_gpu, "s", lambda: _FakeEvent(gpu, streams)))
    assert k == 10 and took == pytest.approx(3e-4) and set(streams) == {"s"}  # on the events' clock, not the host's


def test_pair_ratio_summary_is_the_one_per_pair_ratio():
    ta = np.array([1.0, 2.0, 4.0, 1.0])
    tb = np.array([1.1, 2.0, 2.0, 1.05])
    d = pair_log_ratios(ta, tb)
    assert d.tolist() == pytest.approx(np.log([1.1, 1.0, 0.5, 1.05]).tolist())
    stats = pair_ratio_stats(ta, tb)
    assert stats["ratio_median"] == pytest.approx(np.exp(np.median(d)))  # the certificate's deciding statistic
    assert stats["ratio_of_medians"] == pytest.approx(np.median(tb) / np.median(ta))
    with pytest.raises(ValueError, match="equally long"):
        pair_log_ratios(ta, tb[:3])


def test_time_pairs_events_times_both_sides_on_their_streams(clock):
    """Host time (wall clock) and GPU time (events) per side; B's GPU work is twice A's, its host time equal."""
    gpu_clock, streams = [0.0], []

    def runner(host_s: float, gpu_s: float):
        def run():
            clock[0] += host_s
            gpu_clock[0] += gpu_s
        return run

    ha, hb, ga, gb = time_pairs_events(runner(0.003, 0.001), runner(0.003, 0.002), "stream-a", "stream-b", iters=4,
                                       a_first=np.array([True, False, True, False]),
                                       make_event=lambda: _FakeEvent(gpu_clock, streams))
    assert ha.tolist() == pytest.approx([0.003] * 4) and hb.tolist() == pytest.approx([0.003] * 4)
    assert ga.tolist() == pytest.approx([0.001] * 4) and gb.tolist() == pytest.approx([0.002] * 4)
    assert streams[:4] == ["stream-a", "stream-a", "stream-b", "stream-b"]
    assert streams[4:8] == ["stream-b", "stream-b", "stream-a", "stream-a"]
    # samples of 5 calls between one event pair: still seconds per call
    ha, _, ga, gb = time_pairs_events(runner(0.003, 0.001), runner(0.003, 0.002), "stream-a", "stream-b", iters=2,
                                      make_event=lambda: _FakeEvent(gpu_clock, streams), inner=5)
    assert ha.tolist() == pytest.approx([0.003] * 2) and ga.tolist() == pytest.approx([0.001] * 2)
    assert gb.tolist() == pytest.approx([0.002] * 2)


def test_torch_threads_is_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def _stepping_runner(clock: list[float], costs_s: list[float]):
    """Each call costs the next of ``costs_s`` (cycling) on the controlled clock."""
    state = {"i": 0}

    def run():
        clock[0] += costs_s[state["i"] % len(costs_s)]
        state["i"] += 1

    return run


def test_latency_stats_on_the_controlled_clock(clock):
    """Percentiles, extremes and both throughputs of 10 calls costing 1..10 ms at batch 4, exactly."""
    times = time_calls(_stepping_runner(clock, [k / 1e3 for k in range(1, 11)]), min_iters=10)
    s = latency_stats(times, batch=4)
    assert s["iters"] == 10 and s["total_s"] == pytest.approx(0.055)
    assert s["mean_ms"] == pytest.approx(5.5) and s["median_ms"] == s["p50_ms"] == pytest.approx(5.5)
    assert s["p10_ms"] == pytest.approx(1.9) and s["p90_ms"] == pytest.approx(9.1)  # linear interpolation
    assert s["p99_ms"] == pytest.approx(9.91) and s["min_ms"] == pytest.approx(1) and s["max_ms"] == pytest.approx(10)
    assert s["throughput_qps"] == pytest.approx(10 / 0.055)  # queries (batches) per second
    assert s["throughput_ips"] == pytest.approx(4 * 10 / 0.055)  # images per second


class _FakeEvent:
    """Stands in for torch.cuda.Event(enable_timing=True): records a separate 'GPU' clock."""

    def __init__(self, gpu_clock: list[float], streams: list):
        self.gpu_clock, self.streams, self.t = gpu_clock, streams, None

    def record(self, stream):
        self.streams.append(stream)
        self.t = self.gpu_clock[0]

    def synchronize(self):
        pass

    def elapsed_time(self, end) -> float:
        return (end.t - self.t) * 1e3  # ms, as CUDA events report


def test_time_calls_events_reports_host_and_gpu_time_apart(clock):
    """Host wall time (3 ms, launch + sync) and GPU compute time (2 ms, between the events) per call."""
    gpu_clock, streams = [0.0], []

    def run():
        clock[0] += 0.003
        gpu_clock[0] += 0.002

    host, gpu = time_calls_events(run, "stream-1", min_iters=4, min_time_s=0.02,
                                  make_event=lambda: _FakeEvent(gpu_clock, streams))
    assert len(host) == len(gpu) == 7  # 7 x 3 ms reaches the 20 ms bound
    assert host.tolist() == pytest.approx([0.003] * 7) and gpu.tolist() == pytest.approx([0.002] * 7)
    assert set(streams) == {"stream-1"} and len(streams) == 14  # one event pair per call, on the runner's stream


def test_interleaved_latency_ratio_is_per_pair(clock):
    calls: list[str] = []
    res = interleaved_latency(_runner(clock, 0.002, calls, "a"), _runner(clock, 0.001, calls, "b"), warmup_s=0.0,
                              iters=6)
    assert res["ratio_median"] == pytest.approx(0.5) and res["ratio_of_medians"] == pytest.approx(0.5)
    assert res["median_a_ms"] == pytest.approx(2.0) and res["median_b_ms"] == pytest.approx(1.0)


@pytest.mark.gpu
def test_cuda_events_and_graph_replay_on_a_real_device():
    """On CUDA: a captured graph replays the module's output; GPU time from real events is positive."""
    from taslora_deploy.runners import torch_runner

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10)).cuda()
    plain, graph = torch_runner(module, 4, (3, 4, 4), "cuda"), torch_runner(module, 4, (3, 4, 4), "cuda", cuda_graph=True)
    assert torch.allclose(plain(), graph(), atol=1e-5)  # same seeded batch, same weights
    host, gpu = time_calls_events(graph, graph.stream, min_iters=5)
    assert len(host) == len(gpu) == 5 and (gpu > 0).all()


def test_timing_keeps_freed_memory_from_the_first_warm_up(monkeypatch) -> None:
    """Every timed loop starts by fixing glibc's malloc thresholds (alternating runners otherwise page-fault)."""
    calls: list[int] = []
    monkeypatch.setattr(timing, "keep_freed_memory", lambda: calls.append(1) or True)
    timing.warm_up([lambda: None], seconds=0.0)
    assert calls
    calls.clear()
    timing.time_calls(lambda: None, min_iters=2)
    assert calls


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_applies_on_glibc() -> None:
    from taslora_core.heap import keep_freed_memory

    assert keep_freed_memory() is True and keep_freed_memory() is True  # idempotent
