"""The files of a search run folder (`<workdir>/searches/<run>/`) and their reading and writing.

    search.json          the settings ("cli": the options, resolved checkpoint path; space, constraints, config)
    state.json           the evolution's state after each generation (what --resume continues from)
    history.jsonl        one line per evaluated subnet, in order
    best.json            the best subnet (flat: embed_dim, depth, mlp_ratios, num_heads) plus its measures
    summary.json         the run in numbers; fitness_vs_flops.png; split.json when the split was carved
    pareto.json          a Pareto search's front (`pareto_file`), with pareto.png (`pareto_outputs`)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from taslora_core import workspace
from taslora_core.artifact_read import read_json_artifact
from taslora_core.atomic import atomic_write_json, atomic_write_text
from taslora_core.integrity import RUN_FILES_RECORDED, SHA256_KEY, hashes_of
from taslora_core.search.config import SearchConfig, SearchError
from taslora_core.search.constraints import Constraints
from taslora_core.search.evolution import Record, SearchResult
from taslora_core.search.latency_verify import latency_source
from taslora_core.search.messages import describe
from taslora_core.space import SearchSpace

SETTINGS_JSON = "search.json"
STATE_JSON = "state.json"
HISTORY_JSONL = "history.jsonl"
BEST_JSON = workspace.BEST_JSON
PLOT_PNG = "fitness_vs_flops.png"
SUMMARY_JSON = workspace.SUMMARY_JSON
SPLIT_JSON = "split.json"
SETTINGS_FORMAT = "taslora-search"
RESUME_FIX = "this search cannot be resumed: start a new one (without --resume)"


def find_resumable(workdir: Path, run_dir: Path | None) -> Path:
    """`run_dir` when it is an unfinished search, else the newest unfinished search of the workspace."""
    if run_dir is not None:
        if not (run_dir / SETTINGS_JSON).exists():
            raise SearchError(f"{run_dir} is not a search run folder ({SETTINGS_JSON} missing); pass one under "
                              f"{workdir}/searches")
        if (run_dir / BEST_JSON).exists():
            raise SearchError(f"search {run_dir} already finished ({BEST_JSON} exists); start a new search instead")
        return run_dir
    unfinished = [r.path for r in workspace.runs(workdir, "searches", finished_only=False)
                  if (r.path / SETTINGS_JSON).exists() and not (r.path / BEST_JSON).exists()]
    if not unfinished:
        raise SearchError(f"no unfinished search in {workdir}/searches to resume; start one without --resume")
    return unfinished[-1]


def read_settings(run: Path) -> dict[str, Any]:
    """search.json of a run folder."""
    return read_json_artifact(run / SETTINGS_JSON, "search settings", RESUME_FIX)


def write_settings(run: Path, options: dict[str, Any], space: SearchSpace, constraints: Constraints,
                   config: SearchConfig, world_size: int) -> None:
    """search.json: what a resume reads back (the options under "cli")."""
    atomic_write_json(run / SETTINGS_JSON, {
        "format": SETTINGS_FORMAT, "cli": options, "space": space.to_dict(),
        "constraints": constraints.to_dict(), "config": config.to_dict(), "world_size": world_size,
    })


def read_state(run: Path) -> dict[str, Any]:
    """state.json of a run folder; SearchError when the search stopped before its first generation ended."""
    path = run / STATE_JSON
    if not path.exists():
        raise SearchError(f"{run} has no {STATE_JSON}: it stopped before finishing its first generation; start anew")
    return read_json_artifact(path, "search state", RESUME_FIX)


def write_history(run: Path, history: list[Record]) -> None:
    """history.jsonl: every evaluation so far, one JSON object a line."""
    atomic_write_text(run / HISTORY_JSONL, "".join(json.dumps(r) + "\n" for r in history))


def best_document(result: SearchResult, space: SearchSpace, constraints: Constraints, config: SearchConfig,
                  source: dict[str, Any], run: Path) -> dict[str, Any]:
    """The best.json document: the subnet as a nested object (`Subnet.to_dict`) under "subnet", then its
    measures and where they came from. `Subnet.load` reads it, and also the flat form older runs wrote (the
    subnet's fields at the top level).

    `source` holds what the search read: ckpt (path), ckpt_kind, use_experts.
    """
    best = result.best
    return {
        "subnet": best["subnet"],
        "space": space.to_dict(),
        "fitness": best["fitness"],
        "metric": config.metric,
        "loss": best.get("loss"),
        "top1": best.get("top1"),
        "flops": best[f"flops_{constraints.counter}"],
        "flops_autoformer": best["flops_autoformer"],
        "flops_macs": best["flops_macs"],
        "params": best["params"],
        "counter": constraints.counter,
        "ckpt": source["ckpt"],
        "ckpt_kind": source["ckpt_kind"],
        "use_experts": source["use_experts"],
        "routing_entropy": best.get("routing_entropy"),
        **latency_fields(best, constraints, config),
        "constraints": constraints.to_dict(),
        "seed": config.seed,
        "search_run": str(run),
    }


def latency_fields(record: Record, constraints: Constraints, config: SearchConfig) -> dict[str, Any]:
    """The latency of a returned subnet as best.json and summary.json show it: `latency_ms` only ever measured,
    `latency_predicted_ms` the latency model's prediction, `latency_source` which of them decided."""
    return {"latency_ms": record.get("latency_ms"), "latency_predicted_ms": record.get("latency_predicted_ms"),
            "latency_source": latency_source(record),
            "latency_target": constraints.latency_target or config.latency_target,
            "latency_batch": constraints.latency_batch if constraints.latency_max_ms is not None else None}


def write_outputs(run: Path, result: SearchResult, space: SearchSpace, constraints: Constraints,
                  config: SearchConfig, source: dict[str, Any], out: Path | None, wall_s: float,
                  extra: dict[str, Any] | None = None) -> Path:
    """history.jsonl, best.json (and its copy at `out`), the plot and summary.json; returns the best JSON's path.

    `source` holds ckpt, ckpt_kind, use_experts (as for `best_document`) and data, split, val_images, world_size;
    `extra` adds fields to summary.json (a Pareto search's front and latency report).
    """
    from taslora_core.plots import plot_fitness_vs_flops

    best = result.best
    write_history(run, result.history)
    doc = best_document(result, space, constraints, config, source, run)
    atomic_write_json(run / BEST_JSON, doc)
    best_path = run / BEST_JSON
    if out is not None:
        best_path = Path(out)
        atomic_write_json(best_path, doc)
    plot = plot_fitness_vs_flops(result.history, constraints, best, run / PLOT_PNG, metric=config.metric)
    evals = [r.get("eval_s") for r in result.history if r.get("eval_s") is not None]
    span = constraints.feasible_range(space)
    atomic_write_json(run / SUMMARY_JSON, {
        "best_json": str(best_path),
        "subnet": best["subnet"],
        "fitness": best["fitness"],
        "metric": config.metric,
        "loss": best.get("loss"),
        "top1": best.get("top1"),
        "flops": doc["flops"],
        "flops_autoformer": best["flops_autoformer"],
        "flops_macs": best["flops_macs"],
        "params": best["params"],
        **latency_fields(best, constraints, config),
        "counter": constraints.counter,
        "constraints": describe(constraints),
        "space_flops_range": list(span["flops"]),
        "space_params_range": list(span["params"]),
        "evaluations": len(result.history),
        "generations": result.generations,
        "config": config.to_dict(),
        "ckpt": source["ckpt"],
        "data": source["data"],
        "split": source["split"],
        "val_images": source["val_images"],
        "world_size": source["world_size"],
        "wall_s": wall_s,
        "eval_s_mean": sum(evals) / len(evals) if evals else None,
        "plot": str(plot),
        "notes": result.notes,
        **(extra or {}),
        SHA256_KEY: hashes_of(run, RUN_FILES_RECORDED),  # best.json, pareto.json: checked where they are read
    })
    return best_path
