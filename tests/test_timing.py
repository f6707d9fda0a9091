"""The one timing loop (taslora_deploy.timing) on a clock that moves only when a runner runs."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from taslora_deploy.timing import time_calls, time_pairs, torch_threads, warm_up


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


def test_torch_threads_is_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
