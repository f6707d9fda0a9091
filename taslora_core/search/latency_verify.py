"""Verification of a search screened by a latency model: what the search returns is measured on the target.

A search with `--latency-model` ranks and screens candidates by *predicted* latency (`latency_predicted_ms` in
their records). Before anything is returned, the returned subnets are measured (`latency_ms`):

- the single-objective pick (best.json): candidates in fitness order are measured until one meets the budget;
  each that breaks it is rejected and counted (at most `tries` measurements, else `LatencyVerificationError`);
  after two rejections the measured / predicted ratio seen so far screens the rest, so a model that runs
  optimistic near the budget does not spend every try on candidates it already knows are over;
- a Pareto front: the front is recomputed with measured values until every member is measured and within the
  budget: members that break the budget are rejected, members that a measurement pushes off the front leave it,
  and candidates that come onto the front in their place are measured in turn.

A predicted number is never shown as measured: `latency_ms` holds only measurements, and `latency_source` says
which number decided ("measured", or "predicted" when verification was turned off).
"""

from __future__ import annotations

import math
import statistics
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
DRIFT_TOLERANCE = 0.03
"""Measured/predicted ratio above 1 + this: the search advises a refit (3%: above the held-out MAPE measured on a
quiet machine, 1.9-2.4%)."""


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
    measured_over_predicted: float | None = None
    """Median measured / predicted latency over the measured candidates (before clamping at 1): how far the
    target has drifted from the model (> 1: slower now than at fit time)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"verified": self.verified, "measured": self.measured, "rejected": len(self.rejected),
                "rejected_candidates": self.rejected, "left_front": self.left_front,
                "measured_over_predicted": self.measured_over_predicted}

    def drifted(self, tolerance: float = DRIFT_TOLERANCE) -> bool:
        """Whether the target measured more than `tolerance` slower than the model predicts (time to refit)."""
        return self.measured_over_predicted is not None and self.measured_over_predicted > 1.0 + tolerance


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


def _median_ratio(history: Sequence[Record]) -> float | None:
    ratios = [r["latency_ms"] / r["latency_predicted_ms"] for r in history
              if r.get("latency_ms") is not None and r.get("latency_predicted_ms")]
    return statistics.median(ratios) if ratios else None


def measured_over_predicted(history: Sequence[Record]) -> float:
    """Median of measured / predicted latency over the records measured so far (1.0 when there are none), never
    below 1: how much slower the target runs now than the model predicts (a fit on another day, another load)."""
    return max(1.0, _median_ratio(history) or 1.0)


RECALIBRATE_AFTER = 2
"""Rejections after which the verification stops measuring candidates that the measured / predicted ratio seen so
far already puts over the budget (one rejection can be noise; two are a model that is off near the budget)."""


def verify_best(history: Sequence[Record], measure: Measure, budget: float | None, check: LatencyCheck,
                tries: int = DEFAULT_TRIES) -> Record:
    """The best-fitness record whose measured latency meets `budget` (measuring in fitness order). After
    RECALIBRATE_AFTER rejections, candidates whose prediction times the measured / predicted ratio breaks the
    budget are skipped unmeasured, so a model that is uniformly optimistic near the budget costs a few
    measurements, not `tries`."""
    spent = 0
    for record in sorted(history, key=_fitness_order):
        if record.get("latency_rejected"):
            continue
        if record.get("latency_ms") is None:
            predicted = record.get("latency_predicted_ms")
            if (budget is not None and predicted is not None and len(check.rejected) >= RECALIBRATE_AFTER
                    and predicted * measured_over_predicted(history) > budget):
                continue
            if spent >= tries:
                break
            spent += 1
        if _measure(record, measure, check, budget):
            check.measured_over_predicted = _median_ratio(history)
            return record
    check.measured_over_predicted = _median_ratio(history)
    shown = ", ".join(f"{r['latency_ms']:.3g} ms (predicted {r['latency_predicted_ms']:.3g})"
                      for r in check.rejected[:5] if r.get("latency_predicted_ms") is not None)
    raise LatencyVerificationError(
        f"the {len(check.rejected)} best candidates by fitness that the latency model let through all broke the "
        f"{budget:g} ms budget when measured ({shown}); the latency model is off near the budget: refit it "
        "(taslora latency fit, on a quiet machine) or raise --latency-budget")


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
    check.measured_over_predicted = _median_ratio(history)
    members = [r for r in front if r.get("latency_ms") is not None and not r.get("latency_rejected")]
    if not members:
        raise LatencyVerificationError(
            f"every member of the Pareto front broke the {budget:g} ms budget when measured "
            f"({len(check.rejected)} rejected); refit the latency model with more samples or raise --latency-budget")
    members.sort(key=lambda r: (objective_vector(r, objectives, counter)[::-1], tuple(r["key"])))
    return members


def _rejected(history: Sequence[Record], key: tuple) -> bool:
    return any(tuple(r["key"]) == key and r.get("latency_rejected") for r in history)
