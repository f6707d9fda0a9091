"""FLOPs and params of subnets (cached: the search asks for the same subnet many times) and the space's span."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from taslora_core import complexity
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, smallest_subnet

if TYPE_CHECKING:
    from taslora_core.search.constraints import Constraints


@lru_cache(maxsize=1 << 16)
def flops_of(space: SearchSpace, subnet: Subnet, counter: str) -> float:
    """FLOPs per image of `subnet` by `counter` (cached)."""
    return complexity.flops(space, subnet, counter)


@lru_cache(maxsize=1 << 16)
def params_of(space: SearchSpace, subnet: Subnet) -> int:
    """Parameters of `subnet` (cached)."""
    return complexity.params(space, subnet)


def measure(space: SearchSpace, subnet: Subnet) -> dict[str, float]:
    """FLOPs with both counters and params of a subnet (cached)."""
    return {
        "flops_autoformer": flops_of(space, subnet, "autoformer"),
        "flops_macs": flops_of(space, subnet, "macs"),
        "params": params_of(space, subnet),
    }


def space_range(constraints: "Constraints", space: SearchSpace) -> dict[str, Any]:
    """The FLOPs (by the constraints' counter) and params span of the space: its smallest and largest subnet,
    plus their latency when the constraints bound it and can measure it.

    Every count grows with each choice (depth, embed, heads, ratio), so these two subnets bound all others.
    """
    lo, hi = smallest_subnet(space), largest_subnet(space)
    out: dict[str, Any] = {
        "counter": constraints.counter,
        "flops": (flops_of(space, lo, constraints.counter), flops_of(space, hi, constraints.counter)),
        "params": (params_of(space, lo), params_of(space, hi)),
    }
    if constraints.latency_max_ms is not None and constraints.latency_fn is not None:
        out["latency_ms"] = (constraints.latency_of(lo), constraints.latency_of(hi))
    return out
