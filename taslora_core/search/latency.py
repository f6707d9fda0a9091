"""The latency hook of the constraints: a measured-latency lookup called only for subnets that pass the cheap
FLOPs/params bounds (a measurement costs a materialised model and timed runs; the counts cost nothing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from taslora_core.search.config import SearchError
from taslora_core.subnet import Subnet

if TYPE_CHECKING:
    from taslora_core.search.constraints import Constraints

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


def latency_of(constraints: "Constraints", subnet: Subnet) -> float:
    """Latency (ms) of `subnet` via the constraints' `latency_fn` (measured, or predicted by a latency model)."""
    if constraints.latency_fn is None:
        raise SearchError("a latency bound needs a latency_fn (a measured-latency lookup) in the Constraints")
    return float(constraints.latency_fn(subnet))


def extra_measures(constraints: "Constraints", subnet: Subnet) -> dict[str, float]:
    """Measures beyond FLOPs/params recorded with each evaluation (the latency, when bounded by it): a measured
    latency as `latency_ms`, a latency model's prediction as `latency_predicted_ms` (never as a measurement)."""
    if constraints.latency_max_ms is None:
        return {}
    key = "latency_predicted_ms" if constraints.latency_predicted else "latency_ms"
    return {key: latency_of(constraints, subnet)}
