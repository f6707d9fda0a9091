"""`Constraints`: the search's typed budget (FLOPs/params upper and lower bounds, the FLOPs counter, a latency
budget and its target), the bounds check and the space's span under it. What is built on a budget lives in the
modules that import this one (never the other way round): `search.feasible` (a witness subnet) and
`search.messages` (the budget and the span in words)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from taslora_core import complexity
from taslora_core.search import measures
from taslora_core.search.config import SearchError
from taslora_core.search.latency import LatencyFn
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, smallest_subnet

DEFAULT_LATENCY_TARGET = "torch-cpu"


@dataclass(frozen=True)
class Constraints:
    """Upper/lower bounds on FLOPs (per image, by `counter`) and params. `None` = unbounded."""

    flops_max: float | None = None
    flops_min: float | None = None
    params_max: float | None = None
    params_min: float | None = None
    counter: str = "autoformer"
    latency_max_ms: float | None = None
    latency_target: str | None = None
    latency_batch: int = 1
    """Images per timed call of the latency budget (latency is per batch size)."""
    latency_predicted: bool = False
    """True when `latency_fn` is a fitted latency model's prediction (`--latency-model`): candidates record it as
    `latency_predicted_ms`, and the search's result is measured afterwards (`search.latency_verify`)."""
    latency_slack: float = 0.0
    """With a predicted latency: candidates predicted up to this fraction over the budget are let through (the
    model's own error: a subnet it cannot tell from a feasible one is searched, and the measurement decides)."""
    latency_fn: LatencyFn | None = field(default=None, compare=False, repr=False)
    """Latency (ms) of a subnet on `latency_target`, measured or predicted; needed when `latency_max_ms` is set.
    It is only called for subnets that pass the FLOPs/params bounds (those are cheap, a measurement is not)."""

    def __post_init__(self) -> None:
        if self.counter not in complexity.COUNTERS:
            raise SearchError(f"unknown FLOPs counter '{self.counter}'; choose one of {', '.join(complexity.COUNTERS)}")
        for name in ("flops_max", "flops_min", "params_max", "params_min", "latency_max_ms", "latency_slack"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(float(value)) or float(value) < 0):
                raise SearchError(f"{name.replace('_', ' ')} must be a non-negative number, got {value}")
        for what in ("flops", "params"):
            lo, hi = getattr(self, f"{what}_min"), getattr(self, f"{what}_max")
            if lo is not None and hi is not None and lo > hi:
                raise SearchError(
                    f"--min-{what} {complexity.format_amount(lo)} exceeds --{what} {complexity.format_amount(hi)}; "
                    "swap or fix the bounds"
                )

    @staticmethod
    def from_amounts(flops: str | float | None = None, params: str | float | None = None,
                     min_flops: str | float | None = None, min_params: str | float | None = None,
                     counter: str = "autoformer", latency_budget: float | None = None,
                     target: str | None = DEFAULT_LATENCY_TARGET, latency_batch: int = 1) -> "Constraints":
        """Constraints from the command line's amounts ('1.3G', '6M', numbers); the target and batch are kept
        only with a latency budget (target None: decided later, by a latency model or the default). A malformed
        amount raises SearchError naming its option."""

        def amount(option: str, value: str | float | None) -> float | None:
            if value is None:
                return None
            try:
                return complexity.parse_amount(value)
            except ValueError as err:
                raise SearchError(f"--{option}: {err}") from None

        return Constraints(flops_max=amount("flops", flops), flops_min=amount("min-flops", min_flops),
                           params_max=amount("params", params), params_min=amount("min-params", min_params),
                           counter=counter, latency_max_ms=latency_budget,
                           latency_target=target if latency_budget is not None else None,
                           latency_batch=int(latency_batch) if latency_budget is not None else 1)

    @property
    def bounded(self) -> bool:
        """True when at least one bound is set."""
        return any(v is not None for v in (self.flops_max, self.flops_min, self.params_max, self.params_min,
                                           self.latency_max_ms))

    # ------------------------------------------------------------------ bounds check
    def flops_of(self, space: SearchSpace, subnet: Subnet) -> float:
        """FLOPs of `subnet` by this constraint's counter."""
        return measures.flops_of(space, subnet, self.counter)

    def cheap_satisfied(self, space: SearchSpace, subnet: Subnet) -> bool:
        """The FLOPs and params bounds only (no latency measurement)."""
        if self.flops_max is not None or self.flops_min is not None:
            f = self.flops_of(space, subnet)
            if (self.flops_max is not None and f > self.flops_max) or (self.flops_min is not None and f < self.flops_min):
                return False
        if self.params_max is not None or self.params_min is not None:
            p = measures.params_of(space, subnet)
            if (self.params_max is not None and p > self.params_max) or (self.params_min is not None and p < self.params_min):
                return False
        return True

    def satisfied(self, space: SearchSpace, subnet: Subnet) -> bool:
        """True when `subnet` fits every bound (FLOPs checked first, the latency last: it is the dearest)."""
        if not self.cheap_satisfied(space, subnet):
            return False
        if self.latency_max_ms is not None:
            slack = self.latency_slack if self.latency_predicted else 0.0
            return self.latency_of(subnet) <= self.latency_max_ms * (1.0 + slack)
        return True

    # ------------------------------------------------------------------ latency and the space's span
    def latency_of(self, subnet: Subnet) -> float:
        """Latency (ms) of `subnet` via `latency_fn` (measured, or predicted by a latency model)."""
        if self.latency_fn is None:
            raise SearchError("a latency bound needs a latency_fn (a measured-latency lookup) in the Constraints")
        return float(self.latency_fn(subnet))

    def extra_measures(self, subnet: Subnet) -> dict[str, float]:
        """Measures beyond FLOPs/params recorded with each evaluation (the latency, when bounded by it): a measured
        latency as `latency_ms`, a latency model's prediction as `latency_predicted_ms` (never as a measurement)."""
        if self.latency_max_ms is None:
            return {}
        key = "latency_predicted_ms" if self.latency_predicted else "latency_ms"
        return {key: self.latency_of(subnet)}

    def feasible_range(self, space: SearchSpace) -> dict[str, Any]:
        """The FLOPs (by this counter) and params span of the space: its smallest and largest subnet, plus their
        latency when the constraints bound it and can measure it. Every count grows with each choice (depth,
        embed, heads, ratio), so these two subnets bound all others."""
        lo, hi = smallest_subnet(space), largest_subnet(space)
        out: dict[str, Any] = {"counter": self.counter,
                               "flops": (self.flops_of(space, lo), self.flops_of(space, hi)),
                               "params": (measures.params_of(space, lo), measures.params_of(space, hi))}
        if self.latency_max_ms is not None and self.latency_fn is not None:
            out["latency_ms"] = (self.latency_of(lo), self.latency_of(hi))
        return out

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON form (without the latency lookup function)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "latency_fn"}

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> "Constraints":
        """Inverse of to_dict."""
        known = {f.name for f in fields(Constraints)}
        return Constraints(**{k: v for k, v in doc.items() if k in known})
