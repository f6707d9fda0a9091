"""The outputs of a Pareto search beside best.json: pareto.json (the front), pareto.png, and the summary fields
(the front, the latency report: Spearman of FLOPs vs measured latency and the cliffs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taslora_core.search.config import SearchConfig
from taslora_core.search.constraints import Constraints
from taslora_core.search.evolution import SearchResult
from taslora_core.search.latency_report import latency_report
from taslora_core.search.pareto_file import PARETO_JSON, PARETO_PNG, ParetoFront, ParetoMember, write_pareto
from taslora_core.space import SearchSpace

def build_front(result: SearchResult, space: SearchSpace, constraints: Constraints, config: SearchConfig,
                source: dict[str, Any], run: Path | str) -> ParetoFront:
    """The ParetoFront of a finished Pareto search (`source`: ckpt, ckpt_kind, use_experts of the run)."""
    objectives = tuple(result.objectives or ())
    counter = constraints.counter

    def member(record: dict[str, Any]) -> ParetoMember:
        return ParetoMember.from_record(record, objectives, counter)  # latency_source from the record

    return ParetoFront(
        objectives=objectives, space=space, constraints=constraints, members=[member(r) for r in result.front],
        counter=counter, target=config.latency_target or constraints.latency_target, ckpt=str(source["ckpt"]),
        ckpt_kind=str(source["ckpt_kind"]), use_experts=bool(source["use_experts"]), metric=config.metric,
        seed=config.seed, search_run=str(run), evaluations=len(result.history),
        single_objective_pick=member(result.best),
    )


def write_pareto_outputs(run: Path, result: SearchResult, space: SearchSpace, constraints: Constraints,
                         config: SearchConfig, source: dict[str, Any], lookup: Any = None) -> dict[str, Any]:
    """Write pareto.json and pareto.png into `run`; returns the fields summary.json adds (paths, the front in
    brief, and the latency report when latencies were measured; `lookup`, the latency lookup, re-times the
    cliff candidates interleaved when it can `compare`)."""
    from taslora_core.plots import plot_pareto

    front = build_front(result, space, constraints, config, source, run)
    report = None
    if any(r.get("latency_ms") is not None for r in result.history):
        report = latency_report(result.history, front.target, constraints.counter,
                                compare=getattr(lookup, "compare", None))
        front.extra["latency_report"] = report
    path = write_pareto(run / PARETO_JSON, front)
    plot = plot_pareto(result.history, result.front, result.best, front.objectives, run / PARETO_PNG,
                       counter=constraints.counter,
                       title=f"Pareto search: {len(result.front)} of {len(result.history)} subnets on the front")
    return {
        "pareto_json": str(path), "pareto_png": str(plot), "objectives": list(front.objectives),
        "front_size": len(front.members),
        "front": [{"subnet": m.subnet.to_dict(), **m.objectives} for m in front.members],
        "latency_report": report,
    }
