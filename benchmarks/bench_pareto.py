"""Quality of the Pareto search's front on Fashion-MNIST (issue 12, item 4), on the shipped converged supernet +
TAS-LoRA run (benchmarks/reproduction/tas-lora-s0).

1. Pareto search (NSGA-II over validation loss and FLOPs) vs random search at the same number of evaluations:
   hypervolume of each front (loss x FLOPs, both minimised) in normalised coordinates shared by every run:
   0 = the ideal point (the lowest loss any run evaluated, the space's smallest FLOPs), 1 = the nadir (the
   largest loss any run evaluated, the space's largest FLOPs), reference point (1.1, 1.1); 3 seeds.
2. One Pareto search vs the single-objective search run once per FLOPs budget (3 budgets, each run as large as
   the Pareto search): evaluations spent, and the loss of each budget's pick against the best front member
   within that budget.

Every (method, seed, budget) result is written to the results JSON as soon as it is done and skipped on a
re-run, so a killed benchmark resumes; evaluations are memoised per subnet in a fitness cache (the evaluation
is deterministic, so a subnet evaluated by two methods costs once; each method still counts it as its own
evaluation). Results: benchmarks/results/pareto/ (bench_pareto.json: settings and report, bench_pareto.md: the
README's tables, pareto.png: seed 0's front; state.json: every run and the fitness cache, what a re-run resumes).

    nice -n 10 python benchmarks/bench_pareto.py                        # the README's table
    python benchmarks/bench_pareto.py --population 8 --iterations 2 --seeds 1 --val-subset 200   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from taslora_core import complexity
from taslora_core.atomic import atomic_write_json, atomic_write_text
from taslora_core.run_io import load_checkpoint
from taslora_core.search import Constraints, EvolutionSearch, SearchConfig, random_search
from taslora_core.search.fitness import CheckpointFitness, load_val_data
from taslora_core.search.nsga import hypervolume_2d, pareto_indices
from taslora_core.search.objectives import objective_vector
from taslora_core.subnet import Subnet, largest_subnet, smallest_subnet

ROOT = Path(__file__).resolve().parent
DEFAULT_CKPT = ROOT / "reproduction" / "tas-lora-s0"
DEFAULT_OUT = ROOT / "results" / "pareto"
OBJECTIVES = ("loss", "flops")
BUDGET_FRACTIONS = (0.25, 0.5, 0.75)
"""FLOPs budgets of the single-objective runs: fractions of the way from the space's smallest to largest subnet."""
REFERENCE = (1.1, 1.1)
"""Hypervolume reference point in normalised coordinates (just beyond the nadir, so its members count too)."""


class CachedFitness:
    """CheckpointFitness memoised per subnet (saved with the results, so a resumed benchmark re-uses it)."""

    def __init__(self, fitness: CheckpointFitness, cache: dict[str, dict[str, Any]]) -> None:
        self.fitness, self.cache, self.computed = fitness, cache, 0

    def __call__(self, subnet: Subnet) -> dict[str, Any]:
        key = json.dumps(list(subnet.key()))
        if key not in self.cache:
            self.cache[key] = self.fitness(subnet)
            self.computed += 1
        return dict(self.cache[key])


def _points(records: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [objective_vector(r, OBJECTIVES) for r in records]  # type: ignore[misc]


def _front(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pts = _points(records)
    return sorted((records[i] for i in pareto_indices(pts)), key=lambda r: r["flops_autoformer"])


def _brief(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the results keep of a run: loss, top1, FLOPs, params, subnet of each evaluation."""
    return [{k: r.get(k) for k in ("subnet", "loss", "top1", "flops_autoformer", "params", "generation")} for r in records]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="MoLE run folder (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--val-subset", type=int, default=1000, help="validation images per evaluation")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "state.json"
    settings = {"ckpt": str(args.ckpt), "population": args.population, "iterations": args.iterations,
                "seeds": args.seeds, "val_subset": args.val_subset, "objectives": list(OBJECTIVES),
                "budget_fractions": list(BUDGET_FRACTIONS)}
    doc: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    if doc.get("settings") != settings:
        doc = {"settings": settings, "runs": {}, "fitness_cache": {}}  # other settings: start over
    doc["env"] = {"torch": torch.__version__, "threads": args.threads, "python": platform.python_version(),
                  "cpu": platform.processor() or platform.machine(), "host": platform.node()}

    ckpt = load_checkpoint(args.ckpt)
    space = ckpt.supernet.space
    val = load_val_data(ckpt, None, args.val_subset, args.batch_size, 0)
    fitness = CachedFitness(CheckpointFitness(ckpt, val.batches, "loss"), doc["fitness_cache"])
    lo, hi = (complexity.flops(space, f(space)) for f in (smallest_subnet, largest_subnet))
    budgets = [lo + f * (hi - lo) for f in BUDGET_FRACTIONS]
    half = args.population // 2
    base = dict(population=args.population, iterations=args.iterations, parents=half, mutation_num=half,
                crossover_num=half)
    evaluations_per_run = None
    print(f"checkpoint {args.ckpt}; {val.total} validation images; space {space.name} FLOPs "
          f"{complexity.format_amount(lo)} .. {complexity.format_amount(hi)}; population {args.population}, "
          f"{args.iterations} iterations, {args.seeds} seeds", flush=True)

    def save() -> None:
        atomic_write_json(results_path, doc)

    def run_once(name: str, make) -> dict[str, Any]:
        if name in doc["runs"]:
            return doc["runs"][name]
        start, computed = time.perf_counter(), fitness.computed
        history = make()
        doc["runs"][name] = {"history": _brief(history), "evaluations": len(history),
                             "wall_s": time.perf_counter() - start, "new_evaluations": fitness.computed - computed}
        save()
        print(f"  {name}: {len(history)} evaluations ({fitness.computed - computed} new) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        return doc["runs"][name]

    for seed in range(args.seeds):
        pareto = run_once(f"pareto/s{seed}", lambda: EvolutionSearch(
            space, fitness, Constraints(), SearchConfig(seed=seed, objectives=list(OBJECTIVES), **base)).run().history)
        evaluations_per_run = pareto["evaluations"]
        run_once(f"random/s{seed}", lambda: random_search(space, fitness, Constraints(), evaluations_per_run, seed=seed))
        for b, budget in enumerate(budgets):
            run_once(f"single/b{b}/s{seed}", lambda: EvolutionSearch(
                space, fitness, Constraints(flops_max=budget), SearchConfig(seed=seed, **base)).run().history)

    report = summarise(doc, budgets, args.seeds, (lo, hi))
    save()
    atomic_write_json(args.out / "bench_pareto.json", {"settings": settings, "env": doc["env"], "report": report})
    md = markdown(report, settings, doc["env"])
    atomic_write_text(args.out / "bench_pareto.md", md)
    plot_one(doc, args.out / "pareto.png")
    print(md)
    return 0


def summarise(doc: dict[str, Any], budgets: list[float], seeds: int, flops_span: tuple[float, float]) -> dict[str, Any]:
    """Hypervolumes (one normalisation and reference point for every run) and the per-budget comparison."""
    runs = doc["runs"]
    every = [r for run in runs.values() for r in run["history"]]
    ideal = (min(r["loss"] for r in every), flops_span[0])
    nadir = (max(r["loss"] for r in every), flops_span[1])

    def normalised(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [tuple((p[m] - ideal[m]) / (nadir[m] - ideal[m]) for m in range(2)) for p in points]  # type: ignore[misc]

    hv: dict[str, list[float]] = {"pareto": [], "random": []}
    fronts: dict[str, list[int]] = {"pareto": [], "random": []}
    for seed in range(seeds):
        for method in hv:
            front = _front(runs[f"{method}/s{seed}"]["history"])
            hv[method].append(hypervolume_2d(normalised(_points(front)), REFERENCE))
            fronts[method].append(len(front))
    per_budget = []
    for b, budget in enumerate(budgets):
        rows = []
        for seed in range(seeds):
            front = _front(runs[f"pareto/s{seed}"]["history"])
            within = [r for r in front if r["flops_autoformer"] <= budget]
            single = runs[f"single/b{b}/s{seed}"]["history"]
            pick = min(single, key=lambda r: (r["loss"], json.dumps(r["subnet"])))
            member = min(within, key=lambda r: r["loss"]) if within else None
            rows.append({"seed": seed, "single_loss": pick["loss"], "single_top1": pick["top1"],
                         "single_flops": pick["flops_autoformer"], "single_evaluations": len(single),
                         "front_loss": member["loss"] if member else None,
                         "front_top1": member["top1"] if member else None,
                         "front_flops": member["flops_autoformer"] if member else None})
        per_budget.append({"budget_flops": budget, "rows": rows})
    pareto_evals = [runs[f"pareto/s{s}"]["evaluations"] for s in range(seeds)]
    single_evals = [sum(runs[f"single/b{b}/s{s}"]["evaluations"] for b in range(len(budgets))) for s in range(seeds)]
    return {"ideal": list(ideal), "nadir": list(nadir), "reference": list(REFERENCE), "hypervolume": hv, "front_sizes": fronts,
            "evaluations": {"pareto": pareto_evals, "random": [runs[f"random/s{s}"]["evaluations"] for s in range(seeds)],
                            "single_3_budgets": single_evals},
            "per_budget": per_budget,
            "wall_s": sum(run["wall_s"] for run in runs.values()),
            "unique_evaluations": len(doc["fitness_cache"])}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _shown_path(path: str) -> str:
    """`path` relative to the repository when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT.parent))
    except ValueError:
        return path


def markdown(report: dict[str, Any], settings: dict[str, Any], env: dict[str, Any]) -> str:
    """The README's tables."""
    hv, ev, fa = report["hypervolume"], report["evaluations"], complexity.format_amount
    seeds = len(hv["pareto"])
    lines = [
        f"Fashion-MNIST, `{_shown_path(settings['ckpt'])}` (converged supernet + TAS-LoRA), validation loss on the first "
        f"{settings['val_subset']} held-out images, population {settings['population']}, "
        f"{settings['iterations']} iterations, {seeds} seeds (0..{seeds - 1}); {env['cpu']}, {env['threads']} thread(s).",
        "",
        f"Hypervolume of the (loss, FLOPs) front in normalised coordinates (0 = ideal: loss {report['ideal'][0]:.4f}, "
        f"FLOPs {fa(report['ideal'][1])}; 1 = nadir: loss {report['nadir'][0]:.4f}, FLOPs {fa(report['nadir'][1])}; "
        f"reference point ({REFERENCE[0]}, {REFERENCE[1]}); larger is better, at most {REFERENCE[0] * REFERENCE[1]:.2f}):",
        "",
        "| method | evaluations | hypervolume (mean ± sd) | per seed | front size |",
        "|---|---|---|---|---|",
    ]
    for method in ("pareto", "random"):
        lines.append(f"| {'Pareto search (NSGA-II)' if method == 'pareto' else 'random search'} | "
                     f"{ev[method][0]} | {_mean_sd(hv[method])} | {', '.join(f'{v:.4f}' for v in hv[method])} | "
                     f"{', '.join(map(str, report['front_sizes'][method]))} |")
    lines += [
        "",
        f"One Pareto search ({ev['pareto'][0]} evaluations) vs the single-objective search once per FLOPs budget "
        f"({ev['single_3_budgets'][0]} evaluations for the 3 budgets): validation loss of each budget's pick and "
        "of the best front member within the budget (mean over seeds; lower is better):",
        "",
        "| FLOPs budget | single-objective pick: loss (top-1) | best front member: loss (top-1) | front - single |",
        "|---|---|---|---|",
    ]
    for entry in report["per_budget"]:
        rows = entry["rows"]
        single = [r["single_loss"] for r in rows]
        front = [r["front_loss"] for r in rows if r["front_loss"] is not None]
        diffs = [r["front_loss"] - r["single_loss"] for r in rows if r["front_loss"] is not None]
        lines.append(
            f"| <= {fa(entry['budget_flops'])} | {statistics.mean(single):.4f} "
            f"({100 * statistics.mean(r['single_top1'] for r in rows):.2f}%) | "
            + (f"{statistics.mean(front):.4f} ({100 * statistics.mean(r['front_top1'] for r in rows if r['front_top1'] is not None):.2f}%)"
               if front else "no member within budget")
            + f" | {', '.join(f'{d:+.4f}' for d in diffs)} |")
    lines += ["", f"Wall time of all runs: {report['wall_s'] / 60:.1f} min ({report['unique_evaluations']} distinct "
                  "subnets evaluated; a subnet met by two methods is evaluated once and counted by each)."]
    return "\n".join(lines) + "\n"


def plot_one(doc: dict[str, Any], path: Path) -> Path:
    """pareto.png of seed 0's Pareto search (every evaluation grey, the front, the best-loss pick starred)."""
    from taslora_core.plots import plot_pareto

    history = doc["runs"]["pareto/s0"]["history"]
    pick = min(history, key=lambda r: r["loss"])
    return plot_pareto(history, _front(history), pick, OBJECTIVES, path,
                       title=f"Pareto search on fmnist (seed 0): {len(_front(history))} of {len(history)} on the front")


if __name__ == "__main__":
    raise SystemExit(main())
