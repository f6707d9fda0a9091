"""The latency hook of the constraints: what a measured-latency lookup is (`LatencyLookup`, called only for subnets
that pass the cheap FLOPs/params bounds: a measurement costs a materialised model and timed runs; the counts cost
nothing), how a search's latencies are measured (`MeasureSpec`) and the one check of a batch size and statistic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from taslora_core.search.config import SearchError
from taslora_core.subnet import Subnet

STATISTICS = ("median", "min")
"""What a latency measurement keeps of its timed runs (`taslora_deploy.timing.latency_stats` keys without '_ms')."""

LatencyFn = Callable[[Subnet], float]
"""Latency (ms, one batch) of a subnet on one target: a measurement, or a latency model's prediction."""


@dataclass(frozen=True)
class MeasureSpec:
    """How a search's latencies are measured: runtime, images per call, CPU threads, and which statistic of the
    timed runs is kept ('median', or 'min' on a machine shared with other jobs)."""

    target: str
    batch: int = 1
    threads: int | None = 1
    statistic: str = "median"

    def __post_init__(self) -> None:
        check_measure(self.batch, self.statistic)


def check_measure(batch: int, statistic: str, batch_option: str = "--latency-batch",
                  statistic_option: str = "--latency-statistic") -> None:
    """THE check of how a latency is measured (search, lookup, `latency fit`): a batch size >= 1 and a known
    statistic; SearchError naming the option otherwise."""
    if int(batch) < 1:
        raise SearchError(f"{batch_option} must be at least 1, got {batch}")
    if statistic not in STATISTICS:
        raise SearchError(f"unknown {statistic_option} '{statistic}'; choose one of {', '.join(STATISTICS)}")


class LatencyLookup(Protocol):
    """A cached latency measurement as the search uses it (`taslora_deploy.latency_lookup.LatencyTable`)."""

    target: str
    batch: int
    measured: int
    """Subnets measured (not found in the cache) so far."""
    table: dict[str, float]
    cache_path: Path | None

    def __call__(self, subnet: Subnet) -> float: ...

    def save(self) -> None:
        """Write the cache."""
