"""`taslora search`: evolutionary search for the best subnet under FLOPs/params bounds.

Options are parsed here and handed to `taslora_core.search.run_search`, which owns the run folder; this module
only prints what the verb reports.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from taslora_cli.app import WorkdirOpt, app, console, err_console, handle_errors
from taslora_core.complexity import format_amount
from taslora_core.distributed import DistContext
from taslora_core.search import (
    DEFAULT_OBJECTIVES, Constraints, LatencyLookup, SearchConfig, SearchError, SearchEvents, SearchRun, SearchRunConfig, SearchStart,
    parse_objectives, run_search,
)
from taslora_core.search.constraints import DEFAULT_LATENCY_TARGET
from taslora_core.search.objectives import objective_value
from taslora_core.workspace import DEFAULT_WORKDIR

_CONFIG = SearchConfig()  # the defaults of the options below
_BUDGET = Constraints()


@app.command("search")
@handle_errors
def search_cmd(
    flops: Annotated[Optional[str], typer.Option(
        "--flops", help="Upper bound on FLOPs per image, with K/M/G (e.g. 1.3G). Counted by --counter: by default "
        "AutoFormer's get_complexity (multiply-adds with its quirks; the number the AutoFormer/TAS-LoRA papers quote, "
        "e.g. 1.344G for AutoFormer-T), as `taslora flops` shows.")] = None,
    params: Annotated[Optional[str], typer.Option(
        "--params", help="Upper bound on parameters (e.g. 6M): elements of every sliced tensor, AutoFormer's count.")] = None,
    min_flops: Annotated[Optional[str], typer.Option("--min-flops", help="Lower bound on FLOPs (same counter as --flops).")] = None,
    min_params: Annotated[Optional[str], typer.Option("--min-params", help="Lower bound on parameters.")] = None,
    counter: Annotated[str, typer.Option(
        "--counter", help="FLOPs counter of --flops/--min-flops: 'autoformer' = AutoFormer's get_complexity "
        "(multiply-adds; head counted per token, n = patches+2 in blocks); 'macs' = true multiply-accumulates of the "
        "exported model for one image.")] = _BUDGET.counter,
    ckpt: Annotated[Optional[Path], typer.Option(
        "--ckpt", help="MoLE run folder (or a plain supernet run folder: AutoFormer's search). Default: the latest "
        "MoLE run in the workspace.")] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="fmnist or an ImageNet-style folder. Default: the data recorded with the checkpoint; required "
        "for an imported supernet without recorded data (a held-out split is then carved with --seed).")] = None,
    population: Annotated[int, typer.Option("--population", help="Population size.")] = _CONFIG.population,
    iterations: Annotated[int, typer.Option("--iterations", help="Generations after the random initial one.")] = _CONFIG.iterations,
    parents: Annotated[int, typer.Option("--parents", help="Top-k subnets kept as parents.")] = _CONFIG.parents,
    mutation_num: Annotated[Optional[int], typer.Option("--mutation-num", help="Mutants per generation (default: population // 2, i.e. 25 of 50).")] = None,
    crossover_num: Annotated[Optional[int], typer.Option("--crossover-num", help="Crossover children per generation (default: population // 2).")] = None,
    m_prob: Annotated[float, typer.Option("--m-prob", help="Per-layer mutation probability of MLP ratio and heads.")] = _CONFIG.m_prob,
    s_prob: Annotated[float, typer.Option("--s-prob", help="Probability of resampling depth, and embed dim.")] = _CONFIG.s_prob,
    val_subset: Annotated[Optional[int], typer.Option(
        "--val-subset", help="Evaluate on the first N images of the held-out split only.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Evaluation batch size (per process).")] = _CONFIG.batch_size,
    metric: Annotated[str, typer.Option(
        "--metric", help="Fitness: 'loss' = cross-entropy on the held-out split (paper, lower is better); "
        "'top1' = top-1 accuracy (AutoFormer; ranked by top-1 error).")] = _CONFIG.metric,
    no_experts: Annotated[bool, typer.Option(
        "--no-experts", help="Evaluate the bare supernet even with a MoLE checkpoint.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the evolution (and of a carved split).")] = _CONFIG.seed,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Where to write the best subnet's JSON (default: <run>/best.json; the run folder always "
        "gets a copy).")] = None,
    latency_budget: Annotated[Optional[float], typer.Option(
        "--latency-budget", help="Upper bound on measured latency in ms at batch 1 on --target (each candidate that "
        "passes the FLOPs/params bounds is materialised and timed once; values are cached per subnet under "
        "<workdir>/latency-cache).")] = None,
    target: Annotated[str, typer.Option(
        "--target", help="Latency target of --latency-budget and of the latency objective: torch-cpu, ort-cpu "
        "(onnxruntime on the CPU), torch-cuda or trt (TensorRT engine on the GPU).")] = DEFAULT_LATENCY_TARGET,
    pareto: Annotated[bool, typer.Option(
        "--pareto", help="Multi-objective search (NSGA-II: non-dominated sorting + crowding distance) over "
        "--objectives; writes the whole front to pareto.json and pareto.png beside best.json (which keeps the "
        "single-objective pick: the best fitness within the bounds).")] = False,
    objectives: Annotated[Optional[str], typer.Option(
        "--objectives", help="With --pareto (implies it): a quality and a cost objective, all minimised: "
        "loss|error , flops|params|latency (default loss,flops). 'latency' is measured once per subnet on "
        "--target (cached like --latency-budget).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda:N.")] = "auto",
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted search: RUN_DIR, or the latest unfinished search of the workspace. "
        "Settings come from the saved run; the result equals an uninterrupted run.")] = False,
    run_dir: Annotated[Optional[Path], typer.Argument(
        help="With --resume: the search run folder to continue.", show_default=False, metavar="RUN_DIR")] = None,
) -> None:
    """Evolutionary search (AutoFormer's evolution, TAS-LoRA's fitness) for the best subnet within the bounds.

    Each candidate: the router runs once, its experts are folded into the sliced weights, then plain forward passes over the held-out validation split saved with the training run (lower loss is better). Constraint-violating and already-seen subnets are never evaluated.

    Under torchrun the ranks split the validation batches and run the same seeded evolution; only rank 0 writes. The last line of stdout is the path of the best subnet's JSON.
    """
    from taslora_core.distributed import init_distributed, shutdown

    config = SearchRunConfig(
        budget=Constraints.from_amounts(flops, params, min_flops, min_params, counter, latency_budget, target),
        search=SearchConfig(population=population, iterations=iterations, parents=parents, mutation_num=mutation_num,
                            crossover_num=crossover_num, m_prob=m_prob, s_prob=s_prob, seed=seed, metric=metric,
                            val_subset=val_subset, batch_size=batch_size, use_experts=not no_experts,
                            objectives=_objectives(pareto, objectives), latency_target=target),
        ckpt=ckpt, data=data, workdir=workdir, out=out, resume=resume, run_dir=run_dir,
    )
    ctx = init_distributed(device)
    try:
        run = run_search(config, ctx, SearchPrinter(), _latency_factory(workdir, ctx))
    except BaseException:
        if ctx.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()  # no barrier: the other ranks may not reach one
        raise
    shutdown(ctx)
    if run.best_path is not None:  # rank 0
        if run.pareto is not None:
            _front_table(run)
        else:
            _top_table(run)
        typer.echo(str(run.best_path))


def _objectives(pareto: bool, objectives: str | None) -> list[str] | None:
    """The objectives of a Pareto search (--objectives implies --pareto), None for the single-objective one."""
    if objectives is None:
        return list(DEFAULT_OBJECTIVES) if pareto else None
    return list(parse_objectives(objectives))


def _latency_factory(workdir: Path, ctx: DistContext):
    """(supernet, target) -> the cached latency lookup of `--latency-budget` under <workdir>/latency-cache."""

    def make(supernet: Any, target: str) -> LatencyLookup:
        from taslora_deploy.latency_lookup import LatencyTable, default_cache_path

        return LatencyTable(supernet, target, default_cache_path(workdir, target, supernet.space), ctx=ctx)

    return make


class SearchPrinter(SearchEvents):
    """Prints the search's progress (rank 0 only: run_search reports nothing on the other ranks)."""

    counter = _BUDGET.counter  # the FLOPs counter of the bounds, known once the search started

    def resuming(self, run_dir: Path, state: dict[str, Any]) -> None:
        _say(f"resuming search {run_dir} from generation {state['next_iteration']} ({len(state['history'])} subnets "
             f"evaluated, {len(state.get('pending', []))} pending)")

    def started(self, s: SearchStart) -> None:
        ckpt, val, cfg, cons = s.ckpt, s.val, s.config, s.constraints
        self.counter = cons.counter
        kind = "MoLE experts + router" if ckpt.kind == "mole" else "plain supernet (AutoFormer's search)"
        _say(f"checkpoint: {ckpt.path} [{kind}; {'--ckpt' if s.ckpt_given else 'latest MoLE run in ' + str(s.workdir)}]")
        if ckpt.kind == "mole":
            _say(f"supernet:   {ckpt.meta.get('supernet_dir')} (recorded in mole.json)")
        _say(f"data:       {val.data_cfg.data} ({val.data_source})")
        _say(f"split:      {val.split_source}; {val.total} validation images"
             + (f" (first {cfg.val_subset})" if cfg.val_subset else "")
             + (f", {s.world_size} ranks x ~{val.local}" if s.world_size > 1 else "")
             + ("" if val.materialised else ", streamed per candidate"))
        _say(f"space:      {s.space.name}; {cons.describe_range(s.space)}")
        _say(f"fitness:    validation {'loss' if cfg.metric == 'loss' else 'top-1 error (1 - top1)'}, "
             f"{'with' if s.use_experts else 'without'} experts; constraints: {cons.describe()}"
             + (f" (e.g. {format_amount(cons.flops_of(s.space, s.witness))} FLOPs satisfies them)"
                if cons.bounded else ""))
        _say(f"search:     population {cfg.population}, {cfg.iterations} iterations, top-{cfg.parents}, "
             f"{cfg.mutation_num} mutants + {cfg.crossover_num} crossovers, seed {cfg.seed}; run {s.run_dir}")

    def generation(self, info: dict[str, Any]) -> None:
        best, counter = info["best"], self.counter
        _say(f"gen {info['generation']:>3}/{info['iterations']}: {info['population_size']:>3} new"
             f" (total {info['evaluated']}), fitness best {info['pop_best']:.4f} median {info['pop_median']:.4f}"
             f" | best so far {best['fitness']:.4f} at {format_amount(best[f'flops_{counter}'])} FLOPs,"
             f" {format_amount(best['params'])} params"
             + (f" | front {info['front_size']}" if "front_size" in info else "") + f" [{info['seconds']:.1f} s]")

    def note(self, message: str) -> None:
        err_console.print(f"note: {message}", highlight=False, soft_wrap=True)

    def latency(self, lookup: LatencyLookup) -> None:
        _say(f"latency ({lookup.target}): {lookup.measured} subnets measured in this run, {len(lookup.table)} in "
             f"the cache {lookup.cache_path}")


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _top_table(run: SearchRun) -> None:
    cons = run.constraints
    table = Table(title=f"top 10 of {len(run.result.history)} evaluated subnets ({cons.describe()})")
    lat = cons.latency_max_ms is not None
    cols = ["#", "fitness", "loss", "top1", f"FLOPs ({cons.counter})", "params"] + (["ms"] if lat else [])
    for col in cols + ["depth", "embed", "heads", "MLP ratios", "gen"]:
        table.add_column(col, justify="right" if col not in ("heads", "MLP ratios") else "left")
    for i, r in enumerate(run.result.top(10), 1):
        s = r["subnet"]
        table.add_row(
            str(i), f"{r['fitness']:.4f}",
            f"{r['loss']:.4f}" if r.get("loss") is not None else "-",
            f"{r['top1']:.4f}" if r.get("top1") is not None else "-",
            format_amount(r[f"flops_{cons.counter}"]), format_amount(r["params"]),
            *([f"{r['latency_ms']:.3f}"] if lat else []),
            str(s["depth"]), str(s["embed_dim"]), " ".join(map(str, s["num_heads"])),
            " ".join(f"{x:g}" for x in s["mlp_ratio"]), str(r["generation"]),
        )
    console.print(table)


def _front_table(run: SearchRun) -> None:
    """The Pareto front as a table (cost ascending; the single-objective pick marked), then the latency report."""
    assert run.pareto is not None
    cons, res = run.constraints, run.result
    quality, cost = res.objectives or ("loss", "flops")
    pick_key = res.best["key"]
    table = Table(title=f"Pareto front: {len(res.front)} of {len(res.history)} evaluated subnets, {quality} vs "
                        f"{cost} ({cons.describe()}); * = single-objective pick (best.json)")
    lat = any(r.get("latency_ms") is not None for r in res.front)
    cols = ["#", quality, "top1", f"FLOPs ({cons.counter})", "params"] + (["ms"] if lat else [])
    for col in cols + ["depth", "embed", "heads", "MLP ratios", "gen"]:
        table.add_column(col, justify="right" if col not in ("heads", "MLP ratios") else "left")
    for i, r in enumerate(res.front, 1):
        s = r["subnet"]
        q = objective_value(r, quality, cons.counter)
        table.add_row(
            f"{i}{'*' if r['key'] == pick_key else ''}", f"{q:.4f}" if math.isfinite(q) else "-",
            f"{r['top1']:.4f}" if r.get("top1") is not None else "-",
            format_amount(r[f"flops_{cons.counter}"]), format_amount(r["params"]),
            *([f"{r['latency_ms']:.3f}" if r.get("latency_ms") is not None else "-"] if lat else []),
            str(s["depth"]), str(s["embed_dim"]), " ".join(map(str, s["num_heads"])),
            " ".join(f"{x:g}" for x in s["mlp_ratio"]), str(r["generation"]),
        )
    console.print(table)
    _say(f"pareto:     {run.pareto['pareto_json']} (plot {run.pareto['pareto_png']})")
    report = run.pareto.get("latency_report")
    if report:
        rho = report["spearman_flops_latency"]
        _say(f"latency:    {report['target']}: Spearman rank correlation of FLOPs ({report['counter']}) vs measured "
             f"latency {'n/a' if rho is None else f'{rho:.3f}'} over {report['measured']} measured subnets; "
             f"{report['cliff_count']} cliffs (fewer FLOPs yet > {100 * report['cliff_noise']:.0f}% slower, confirmed "
             f"by interleaved re-timing of the worst {report['cliffs_checked']} of {report['cliff_candidates']} "
             f"candidate pairs)")
        for c in report["cliffs"][:5]:
            _say(f"  cliff: {format_amount(c['flops'][0])} FLOPs {c['latency_ms'][0]:.3f} ms vs "
                 f"{format_amount(c['flops'][1])} FLOPs {c['latency_ms'][1]:.3f} ms (+{100 * c['slower_by']:.0f}%)")


__all__ = ["search_cmd", "SearchError"]
