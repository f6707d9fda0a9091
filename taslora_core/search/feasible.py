"""Is any subnet feasible? A witness from the smallest, the largest or random subnets, or a one-line error."""

from __future__ import annotations

import random
from taslora_core.search.config import InfeasibleConstraints
from taslora_core.search.constraints import Constraints
from taslora_core.search.messages import describe, describe_range
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, sample_subnet, smallest_subnet


def find_feasible(constraints: Constraints, space: SearchSpace, tries: int = 2000, seed: int = 0,
                  latency_tries: int = 20) -> Subnet | None:
    """A subnet that satisfies all bounds: the smallest, the largest, or one of `tries` random ones
    (of which at most `latency_tries` that pass the cheap bounds get a latency measurement)."""
    rng = random.Random(seed)  # its own generator: the check never shifts the search's random stream
    candidates = [smallest_subnet(space), largest_subnet(space)] + [sample_subnet(space, rng) for _ in range(tries)]
    measured = 0
    for subnet in candidates:
        if not constraints.cheap_satisfied(space, subnet):
            continue
        if constraints.latency_max_ms is None:
            return subnet
        if measured >= latency_tries:
            return None
        measured += 1
        if constraints.latency_of(subnet) <= constraints.latency_max_ms:
            return subnet
    return None


def check_feasible(constraints: Constraints, space: SearchSpace, tries: int = 2000) -> Subnet:
    """Return a witness subnet, or raise InfeasibleConstraints with a one-line message giving the range."""
    found = find_feasible(constraints, space, tries)
    if found is None:
        raise InfeasibleConstraints(
            f"no subnet of search space '{space.name}' satisfies {describe(constraints)}; "
            f"{describe_range(constraints, space)}; relax the bounds"
        )
    return found
