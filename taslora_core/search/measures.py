"""FLOPs and params of subnets (cached: the search asks for the same subnet many times)."""

from __future__ import annotations

from functools import lru_cache

from taslora_core import complexity
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet


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
