"""How a search gets the latency of its candidates, and the verification of what it returns.

Two ways, decided by `--latency-model`:

- measured (no model): every candidate that passes the FLOPs/params bounds is timed on the target by the
  lookup (`taslora_deploy.latency_lookup`, cached per subnet): exact, but a measurement per candidate;
- predicted (a latency-model.json of the same space, target and batch size): candidates are screened and ranked
  by the model's prediction (`latency_predicted_ms`), then `verify` measures what the search returns with
  the lookup (`search.latency_verify`): the returned subnet meets the budget when measured, or the next one
  is measured, and the rejections are counted.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taslora_core.search.config import SearchConfig, SearchError
from taslora_core.search.constraints import DEFAULT_LATENCY_TARGET, Constraints
from taslora_core.search.evolution import SearchResult
from taslora_core.search.latency import LatencyLookup, MeasureSpec, check_measure
from taslora_core.search.latency_model import LatencyModel, check_for_search, host_name, read_latency_model
from taslora_core.search.latency_verify import DEFAULT_TRIES, LatencyCheck, verify_best, verify_front
from taslora_core.subnet import Subnet
from taslora_core.train.config import setting

LatencyFactory = Callable[[Any, MeasureSpec], LatencyLookup]
"""(supernet, how to measure) -> a measured-latency lookup; `taslora_deploy.latency_lookup` provides one (core
cannot)."""


@dataclass
class LatencyOptions:
    """The search's latency options beyond the budget: the model, the batch size and the verification (each field's
    help is its `taslora search` option's)."""

    model: Path | None = setting(
        None, "latency-model.json (or its folder) written by `taslora latency fit` for this space, target and batch "
        "size: search on its predictions, then measure what is returned (best.json and every pareto.json member carry "
        "latency_ms measured and latency_predicted_ms).", flag="--latency-model")
    batch: int | None = setting(
        None, "Images per timed call of the latency budget/objective (latency is per batch size; a GPU service runs "
        "32-256). Default: the --latency-model's, else 1.", flag="--latency-batch")
    statistic: str | None = setting(
        None, "What a latency measurement keeps of its timed runs: median, or min (the fastest run: robust on a "
        "machine shared with other jobs). Default: the --latency-model's, else median.", flag="--latency-statistic")
    verify: bool = setting(
        True, "With --latency-model: measure the returned subnet(s) on the target (default). --no-verify-latency "
        "returns predictions only (latency_source 'predicted'), e.g. where the target cannot run.",
        flag="--verify-latency/--no-verify-latency")
    tries: int = DEFAULT_TRIES
    """Measurements the single-objective verification may spend before it gives up."""
    slack: float | None = setting(
        None, "With --latency-model: also search candidates predicted up to this fraction over --latency-budget (the "
        "measurement decides). Default: the model's held-out MAPE.", flag="--latency-slack")


@dataclass
class LatencySetup:
    """The search's latency machinery, ready to run."""

    constraints: Constraints
    config: SearchConfig
    lookup: LatencyLookup | None = None
    """The measuring lookup (None when nothing is measured: no latency, or a model without verification)."""
    model: LatencyModel | None = None
    options: LatencyOptions = dataclasses.field(default_factory=LatencyOptions)

    def notes(self) -> list[str]:
        """What the user should hear about the latency model: which one, and whether it was fitted elsewhere."""
        if self.model is None:
            return []
        m = self.model
        out = [f"latency model {m.path}: {m.describe()}; candidates are screened by its prediction"
               + ("; the returned subnet(s) are measured on the target" if self.options.verify else
                  "; NOT verified on the target (--no-verify-latency)")]
        here = host_name()
        if m.host and m.host != here:
            out.append(f"the latency model was fitted on host {m.host}, this is {here}: its predictions may be off "
                       "here (the verification measures here); fit one here with `taslora latency fit`")
        return out

    def model_record(self) -> dict[str, Any] | None:
        """What summary.json says of the latency model: its file, sha256, target, batch, form, held-out accuracy."""
        if self.model is None:
            return None
        m = self.model
        return {"path": str(m.path), "sha256": m.sha256, "target": m.target, "batch": m.batch, "threads": m.threads,
                "host": m.host, "form": m.terms.form, "heldout": m.heldout, "verified": self.options.verify}

    def wrap(self, fitness_fn: Any) -> Any:
        """The fitness, with each candidate's latency in its record when the latency is an objective."""
        cfg = self.config
        if not cfg.objectives or cfg.objectives[-1] != "latency":
            return fitness_fn
        if self.model is not None:
            return WithLatency(fitness_fn, self.model.predict, "latency_predicted_ms")
        assert self.lookup is not None
        return WithLatency(fitness_fn, self.lookup, "latency_ms")

    def verify(self, result: SearchResult) -> tuple[SearchResult, LatencyCheck | None]:
        """Measure what a model-screened search returns (see `search.latency_verify`); the result with its best
        (and front) replaced by verified records. Without a model there is nothing to verify (None)."""
        if self.model is None:
            return result, None
        if not self.options.verify or self.lookup is None:
            return result, LatencyCheck(verified=False)
        check = LatencyCheck()
        budget = self.constraints.latency_max_ms
        front = result.front
        if result.objectives:
            front = verify_front(result.history, result.objectives, self.constraints.counter, self.lookup, budget,
                                 check, limit=self.options.tries + 2 * max(len(result.front), 1))
        best = verify_best(result.history, self.lookup, budget, check, self.options.tries)
        return dataclasses.replace(result, best=best, front=front), check


class WithLatency:
    """A fitness that also records each candidate's latency under `key` ('latency_ms' measured by a lookup,
    'latency_predicted_ms' by a model): the latency objective of a Pareto search reads it from the record."""

    def __init__(self, fitness_fn: Any, latency: Callable[[Subnet], float], key: str = "latency_ms") -> None:
        self.fitness_fn, self.latency, self.key = fitness_fn, latency, key

    def __call__(self, subnet: Subnet) -> dict[str, Any]:
        return {**self.fitness_fn(subnet), self.key: float(self.latency(subnet))}


def latency_target(budget: Constraints, cfg: SearchConfig, model: LatencyModel | None = None) -> str:
    """The one target of a latency budget and a latency objective (they share --target); the model's when
    neither names one."""
    targets = {t for t in (budget.latency_target, cfg.latency_target) if t is not None}
    if len(targets) > 1:
        raise SearchError(f"the latency budget and the latency objective name different targets "
                          f"({', '.join(sorted(targets))}); use one --target")
    if targets:
        return targets.pop()
    return model.target if model is not None else DEFAULT_LATENCY_TARGET


def screening_slack(model: LatencyModel, slack: float | None) -> float:
    """How far over the budget a prediction may be and the candidate still be searched: `slack`, or by default
    the model's held-out MAPE (its typical error; 0 without a held-out score). The verification measures."""
    if slack is not None:
        if not 0.0 <= float(slack) < 1.0:
            raise SearchError(f"--latency-slack must be in [0, 1), got {slack}")
        return float(slack)
    mape = model.heldout.get("mape")
    return round(float(mape), 4) if mape is not None and 0.0 <= float(mape) < 1.0 else 0.0


def setup_latency(constraints: Constraints, cfg: SearchConfig, options: LatencyOptions, supernet: Any,
                  factory: LatencyFactory | None) -> LatencySetup:
    """The latency setup of a search whose budget is `constraints` and whose settings are `cfg`."""
    objective = bool(cfg.objectives) and cfg.objectives[-1] == "latency"
    if constraints.latency_max_ms is None and not objective:
        if options.model is not None:
            raise SearchError("--latency-model needs --latency-budget or --objectives <quality>,latency")
        return LatencySetup(constraints, cfg, options=options)
    model = read_latency_model(options.model) if options.model is not None else None
    if model is not None and model.quality_warning():
        print(f"warning: {options.model}: {model.quality_warning()}", file=sys.stderr)
    target = latency_target(constraints, cfg, model)
    if model is not None:
        explicit = {t for t in (constraints.latency_target, cfg.latency_target) if t is not None}
        check_for_search(model, supernet.space, explicit.pop() if explicit else None, options.batch,
                         options.statistic)
    batch = int(options.batch or (model.batch if model is not None else 1))
    statistic = options.statistic or (model.statistic if model is not None else "median")
    check_measure(batch, statistic)
    if objective:
        cfg = dataclasses.replace(cfg, latency_target=target)
    lookup = None
    if model is None or options.verify:
        if factory is None:
            raise SearchError("a latency budget or objective needs a measured-latency lookup (pass latency_factory)")
        try:
            spec = MeasureSpec(target, batch, model.threads if model is not None else 1, statistic)
            lookup = factory(supernet, spec)
        except ValueError as err:
            hint = "; or search with --no-verify-latency (predicted only)" if model is not None else ""
            raise SearchError(f"{' '.join(str(err).split())}{hint}") from None
    if constraints.latency_max_ms is not None:
        slack = 0.0 if model is None else screening_slack(model, options.slack)
        constraints = dataclasses.replace(
            constraints, latency_target=target, latency_batch=batch, latency_predicted=model is not None,
            latency_slack=slack, latency_fn=model.predict if model is not None else lookup)
    return LatencySetup(constraints, cfg, lookup, model, options)
