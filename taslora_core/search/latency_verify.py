"""Verification of a search screened by a latency model: what the search returns is measured on the target.

A search with `--latency-model` ranks and screens candidates by *predicted* latency (`latency_predicted_ms` in
their records). Before anything is returned, the returned subnets are measured (`latency_ms`):

- the single-objective pick (best.json): candidates in fitness order are measured until one meets the budget;
  each that breaks it is rejected and counted (at most `tries` measurements, else `LatencyVerificationError`);
- a Pareto front: the front is recomputed with measured values until every member is measured and within the
  budget: members that break the budget are rejected, members that a measurement pushes off the front leave it,
  and candidates that come onto the front in their place are measured in turn.

A predicted number is never shown as measured: `latency_ms` holds only measurements, and `latency_source` says
which number decided ("measured", or "predicted" when verification was turned off).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from taslora_core.search.config import SearchError
from taslora_core.search.nsga import pareto_indices
from taslora_core.search.objectives import objective_vector
from taslora_core.subnet import Subnet

Record = dict[str, Any]
Measure = Callable[[Subnet], float]
DEFAULT_TRIES = 10
"""Measurements the single-objective verification may spend before it gives up."""


class LatencyVerificationError(SearchError):
    """No candidate the latency model let through meets the budget when measured."""


@dataclass
class LatencyCheck:
    """What the verification did (summary.json's "latency_verification")."""

    measured: int = 0
    """Subnets measured by the verification (cached measurements included)."""
    rejected: list[Record] = field(default_factory=list)
    """Candidates whose measured latency broke the budget: subnet, predicted and measured ms."""
    left_front: int = 0
    """Pareto: members that a measurement pushed off the front (dominated once measured)."""
    verified: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"verified": self.verified, "measured": self.measured, "rejected": len(self.rejected),
                "rejected_candidates": self.rejected, "left_front": self.left_front}


def latency_source(record: Record) -> str | None:
    """'measured' when the record holds a measured latency, 'predicted' when only a prediction, else None."""
    if record.get("latency_ms") is not None:
        return "measured"
    return "predicted" if record.get("latency_predicted_ms") is not None else None


def _measure(record: Record, measure: Measure, check: LatencyCheck, budget: float | None) -> bool:
    """Measure `record` (once; kept in the record) and say whether it meets `budget`; count a rejection."""
    if record.get("latency_ms") is None:
        record["latency_ms"] = float(measure(Subnet.from_dict(record["subnet"])))
        check.measured += 1
    ok = budget is None or record["latency_ms"] <= budget
    if not ok and not record.get("latency_rejected"):
        record["latency_rejected"] = True
        check.rejected.append({"subnet": record["subnet"], "fitness": record.get("fitness"),
                               "latency_predicted_ms": record.get("latency_predicted_ms"),
                               "latency_ms": record["latency_ms"]})
    return ok


def _fitness_order(record: Record) -> tuple:
    value = float(record["fitness"])
    return (value if not math.isnan(value) else math.inf, tuple(record["key"]))


def verify_best(history: Sequence[Record], measure: Measure, budget: float | None, check: LatencyCheck,
                tries: int = DEFAULT_TRIES) -> Record:
    """The best-fitness record whose measured latency meets `budget` (measuring in fitness order)."""
    spent = 0
    for record in sorted(history, key=_fitness_order):
        if record.get("latency_rejected"):
            continue
        if record.get("latency_ms") is None:
            if spent >= tries:
                break
            spent += 1
        if _measure(record, measure, check, budget):
            return record
    shown = ", ".join(f"{r['latency_ms']:.3g} ms (predicted {r['latency_predicted_ms']:.3g})"
                      for r in check.rejected[:5] if r.get("latency_predicted_ms") is not None)
    raise LatencyVerificationError(
        f"the {len(check.rejected)} best candidates by predicted latency all broke the {budget:g} ms budget when "
        f"measured ({shown}); the latency model is off near the budget: refit it with more samples "
        "(taslora latency fit --samples 128) or raise --latency-budget")


def verify_front(history: Sequence[Record], objectives: Sequence[str], counter: str, measure: Measure,
                 budget: float | None, check: LatencyCheck, limit: int) -> list[Record]:
    """The Pareto front of `history` recomputed until every member is measured and within `budget` (at most
    `limit` measurements: then the measured members of the last front are kept). Cost ascending."""
    initial: set[tuple] | None = None
    while True:
        alive = [r for r in history if not r.get("latency_rejected")]
        points = [objective_vector(r, objectives, counter) for r in alive]
        front = [alive[i] for i in pareto_indices(points)]
        keys = {tuple(r["key"]) for r in front}
        initial = keys if initial is None else initial
        todo = [r for r in front if r.get("latency_ms") is None]
        if not todo or check.measured >= limit:
            break
        for record in todo:
            _measure(record, measure, check, budget)
    check.left_front = len([k for k in initial if k not in keys and not _rejected(history, k)])
    members = [r for r in front if r.get("latency_ms") is not None and not r.get("latency_rejected")]
    if not members:
        raise LatencyVerificationError(
            f"every member of the Pareto front broke the {budget:g} ms budget when measured "
            f"({len(check.rejected)} rejected); refit the latency model with more samples or raise --latency-budget")
    members.sort(key=lambda r: (objective_vector(r, objectives, counter)[::-1], tuple(r["key"])))
    return members


def _rejected(history: Sequence[Record], key: tuple) -> bool:
    return any(tuple(r["key"]) == key and r.get("latency_rejected") for r in history)
