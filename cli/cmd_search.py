"""`taslora search`: evolutionary search for the best subnet under FLOPs/params bounds.

Options are parsed here and handed to `taslora_core.search.run_search`, which owns the run folder; this module
only prints what the verb reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from taslora_cli.app import WorkdirOpt, app, handle_errors
from taslora_cli.config_options import config_option
from taslora_cli.search_output import SearchPrinter, front_table, top_table
from taslora_core.search import (
    DEFAULT_OBJECTIVES, Constraints, SearchConfig, SearchError, SearchRunConfig, parse_objectives,
    run_search,
)
from taslora_core.search.latency_setup import LatencyOptions
from taslora_core.workspace import DEFAULT_WORKDIR

_CONFIG = SearchConfig()  # the defaults of the options below
_BUDGET = Constraints()
_LATENCY = LatencyOptions()
# the latency options' types, flags and help are the library's (taslora_core.search.latency_setup.LatencyOptions)
LatencyModelOpt = config_option(LatencyOptions, "model")
LatencyBatchOpt = config_option(LatencyOptions, "batch")
LatencyStatisticOpt = config_option(LatencyOptions, "statistic")
LatencySlackOpt = config_option(LatencyOptions, "slack")
VerifyLatencyOpt = config_option(LatencyOptions, "verify")


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
        "--latency-budget", help="Upper bound on latency in ms of one --latency-batch on --target. Without "
        "--latency-model each candidate that passes the FLOPs/params bounds is materialised and timed once (cached per "
        "subnet under <workdir>/latency-cache); with it candidates are screened by the model and the returned subnet "
        "is measured (the next one when it breaks the budget).")] = None,
    target: Annotated[Optional[str], typer.Option(
        "--target", help="Latency target of --latency-budget and of the latency objective: torch-cpu, ort-cpu "
        "(onnxruntime on the CPU), torch-cuda or trt (TensorRT engine on the GPU). Default: the --latency-model's, "
        "else torch-cpu.")] = None,
    latency_model: LatencyModelOpt = _LATENCY.model,
    latency_batch: LatencyBatchOpt = _LATENCY.batch,
    latency_statistic: LatencyStatisticOpt = _LATENCY.statistic,
    latency_slack: LatencySlackOpt = _LATENCY.slack,
    verify_latency: VerifyLatencyOpt = _LATENCY.verify,
    pareto: Annotated[bool, typer.Option(
        "--pareto", help="Multi-objective search (NSGA-II: non-dominated sorting + crowding distance) over "
        "--objectives; writes the whole front to pareto.json and pareto.png beside best.json (which keeps the "
        "single-objective pick: the best fitness within the bounds).")] = False,
    objectives: Annotated[Optional[str], typer.Option(
        "--objectives", help="With --pareto (implies it): a quality and a cost objective, all minimised: "
        "loss|error , flops|params|latency (default loss,flops). 'latency' is measured once per subnet on "
        "--target (cached like --latency-budget), or predicted by --latency-model and the front measured.")] = None,
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
        budget=Constraints.from_amounts(flops, params, min_flops, min_params, counter, latency_budget, target,
                                        latency_batch or 1),
        search=SearchConfig(population=population, iterations=iterations, parents=parents, mutation_num=mutation_num,
                            crossover_num=crossover_num, m_prob=m_prob, s_prob=s_prob, seed=seed, metric=metric,
                            val_subset=val_subset, batch_size=batch_size, use_experts=not no_experts,
                            objectives=_objectives(pareto, objectives), latency_target=target),
        ckpt=ckpt, data=data, workdir=workdir, out=out, resume=resume, run_dir=run_dir,
        latency=LatencyOptions(model=latency_model, batch=latency_batch, statistic=latency_statistic,
                               slack=latency_slack, verify=verify_latency),
    )
    ctx = init_distributed(device)
    try:
        from taslora_deploy.latency_lookup import latency_factory

        run = run_search(config, ctx, SearchPrinter(), latency_factory(workdir, ctx))
    except BaseException:
        if ctx.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()  # no barrier: the other ranks may not reach one
        raise
    shutdown(ctx)
    if run.best_path is not None:  # rank 0
        front_table(run) if run.pareto is not None else top_table(run)
        typer.echo(str(run.best_path))


def _objectives(pareto: bool, objectives: str | None) -> list[str] | None:
    """The objectives of a Pareto search (--objectives implies --pareto), None for the single-objective one."""
    if objectives is None:
        return list(DEFAULT_OBJECTIVES) if pareto else None
    return list(parse_objectives(objectives))


__all__ = ["search_cmd", "SearchError", "SearchPrinter"]
