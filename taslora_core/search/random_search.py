"""The baseline of the evolution: distinct random subnets within the constraints, each evaluated once."""

from __future__ import annotations

from taslora_core.search.config import SearchConfig
from taslora_core.search.constraints import Constraints
from taslora_core.search.evolution import EvolutionSearch, FitnessFn, Record
from taslora_core.space import SearchSpace


def random_search(
    space: SearchSpace, fitness_fn: FitnessFn, constraints: Constraints, num: int, seed: int = 0,
    max_tries: int = 100000,
) -> list[Record]:
    """Baseline: evaluate `num` distinct random subnets that satisfy the constraints; records in order."""
    search = EvolutionSearch(space, fitness_fn, constraints, SearchConfig(seed=seed, population=max(num, 1),
                                                                            random_max_tries=max_tries))
    search.evaluate_all(search.random_fill(num, set()), 0)
    return search.history
