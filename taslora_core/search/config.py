"""The evolution's settings (`SearchConfig`), the search's errors and the one check of a fitness metric."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

METRICS = ("loss", "top1")
"""Fitness metrics: validation cross-entropy, or top-1 error (1 - top1)."""


class SearchError(ValueError):
    """Bad search settings or a search state that cannot be resumed."""


class InfeasibleConstraints(SearchError):
    """No subnet of the search space satisfies the constraints."""


def check_metric(metric: str) -> str:
    """`metric` when it is one of METRICS; raises SearchError otherwise (the only check of --metric)."""
    if metric not in METRICS:
        raise SearchError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    return metric


@dataclass
class SearchConfig:
    """All search options. Defaults are the paper's (population 50, 20 iterations, top-10 parents, ...)."""

    population: int = 50
    iterations: int = 20
    parents: int = 10
    mutation_num: int | None = None
    """Mutants per generation; None means population // 2 (AutoFormer: 25 of 50)."""
    crossover_num: int | None = None
    """Crossover children per generation; None means population // 2."""
    m_prob: float = 0.2
    s_prob: float = 0.4
    seed: int = 0
    random_max_tries: int = 10000
    """Cap on random draws per population fill (guards feasible-but-tiny regions)."""
    crossover_pair_tries: int = 50
    """AutoFormer's redraws for two parents of equal depth."""
    # Fitness (used by the model-based fitness; the evolution itself only reads 'fitness').
    metric: str = "loss"
    val_subset: int | None = None
    batch_size: int = 256
    use_experts: bool = True
    # Pareto search (`--pareto`): None = the single-objective evolution (top-k by fitness).
    objectives: list[str] | None = None
    """[quality, cost] objectives of NSGA-II selection, e.g. ['loss', 'flops'] (see `search.objectives`)."""
    latency_target: str | None = None
    """Runtime the 'latency' objective is measured on (ort-cpu, torch-cpu, torch-cuda, trt); None otherwise."""

    def __post_init__(self) -> None:
        for name in ("mutation_num", "crossover_num"):
            if getattr(self, name) is None:
                setattr(self, name, int(self.population) // 2)
        for name in ("population", "parents", "random_max_tries", "crossover_pair_tries", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise SearchError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("iterations", "mutation_num", "crossover_num"):
            if int(getattr(self, name)) < 0:
                raise SearchError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("m_prob", "s_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise SearchError(f"{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        check_metric(self.metric)
        if self.objectives is not None:
            from taslora_core.search.objectives import LATENCY_TARGETS, parse_objectives

            self.objectives = list(parse_objectives(self.objectives))
            if self.objectives[-1] != "latency":
                self.latency_target = None  # recorded only where it means something
            elif self.latency_target is not None and self.latency_target not in LATENCY_TARGETS:
                raise SearchError(f"unknown --target '{self.latency_target}'; choose one of {', '.join(LATENCY_TARGETS)}")
        elif self.latency_target is not None:
            self.latency_target = None
        if self.val_subset is not None and self.val_subset < 1:
            raise SearchError(f"val-subset must be positive, got {self.val_subset}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> "SearchConfig":
        """Inverse of to_dict (unknown keys are ignored)."""
        known = {f.name for f in fields(SearchConfig)}
        return SearchConfig(**{k: v for k, v in doc.items() if k in known})

    # Fields that decide which subnets get evaluated: a resumed run must use the saved values.
    EVOLUTION_FIELDS = (
        "population", "parents", "mutation_num", "crossover_num", "m_prob", "s_prob", "seed",
        "random_max_tries", "crossover_pair_tries", "metric", "val_subset", "use_experts", "objectives",
        "latency_target",
    )
