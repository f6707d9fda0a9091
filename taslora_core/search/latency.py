"""The latency hook of the constraints: a measured-latency lookup called only for subnets that pass the cheap
FLOPs/params bounds (a measurement costs a materialised model and timed runs; the counts cost nothing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from taslora_core.search.config import SearchError
from taslora_core.subnet import Subnet

if TYPE_CHECKING:
    from taslora_core.search.constraints import Constraints

LatencyFn = Callable[[Subnet], float]
"""Measured latency (ms, batch 1) of a subnet on one target."""


class LatencyLookup(Protocol):
    """A cached latency measurement as the search uses it (`taslora_deploy.latency_lookup.LatencyTable`)."""

    target: str
    measured: int
    """Subnets measured (not found in the cache) so far."""
    table: dict[str, float]
    cache_path: Path | None

    def __call__(self, subnet: Subnet) -> float: ...

    def save(self) -> None:
        """Write the cache."""


def latency_of(constraints: "Constraints", subnet: Subnet) -> float:
    """Measured latency (ms) of `subnet` via the constraints' `latency_fn`."""
    if constraints.latency_fn is None:
        raise SearchError("a latency bound needs a latency_fn (a measured-latency lookup) in the Constraints")
    return float(constraints.latency_fn(subnet))


def extra_measures(constraints: "Constraints", subnet: Subnet) -> dict[str, float]:
    """Measures beyond FLOPs/params recorded with each evaluation (the latency, when bounded by it)."""
    if constraints.latency_max_ms is None:
        return {}
    return {"latency_ms": latency_of(constraints, subnet)}
