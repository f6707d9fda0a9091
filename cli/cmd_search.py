"""`taslora search`: evolutionary search for the best subnet under FLOPs/params bounds."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from taslora_cli.app import WorkdirOpt, app, console, err_console, fail, handle_errors
from taslora_core import workspace
from taslora_core.checkpoint import atomic_write_json, atomic_write_text
from taslora_core.complexity import COUNTERS, format_amount, parse_amount
from taslora_core.search import (
    METRICS, Constraints, EvolutionSearch, SearchConfig, SearchError, SearchResult,
)
from taslora_core.workspace import DEFAULT_WORKDIR

SETTINGS_JSON = "search.json"
STATE_JSON = "state.json"
HISTORY_JSONL = "history.jsonl"
BEST_JSON = "best.json"
PLOT_PNG = "fitness_vs_flops.png"
SUMMARY_JSON = "summary.json"

# Defaults of the options a resumed search takes from its saved settings (a different explicit value is refused).
_DEFAULTS: dict[str, Any] = {
    "flops": None, "params": None, "min_flops": None, "min_params": None, "counter": "autoformer",
    "ckpt": None, "data": None, "population": 50, "iterations": 20, "parents": 10, "mutation_num": None,
    "crossover_num": None, "m_prob": 0.2, "s_prob": 0.4, "val_subset": None, "metric": "loss",
    "no_experts": False, "seed": 0, "out": None, "latency_budget": None, "target": "torch-cpu",
}


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
        "exported model for one image.")] = "autoformer",
    ckpt: Annotated[Optional[Path], typer.Option(
        "--ckpt", help="MoLE run folder (or a plain supernet run folder: AutoFormer's search). Default: the latest "
        "MoLE run in the workspace.")] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="fmnist or an ImageNet-style folder. Default: the data recorded with the checkpoint; required "
        "for an imported supernet without recorded data (a held-out split is then carved with --seed).")] = None,
    population: Annotated[int, typer.Option("--population", help="Population size.")] = 50,
    iterations: Annotated[int, typer.Option("--iterations", help="Generations after the random initial one.")] = 20,
    parents: Annotated[int, typer.Option("--parents", help="Top-k subnets kept as parents.")] = 10,
    mutation_num: Annotated[Optional[int], typer.Option("--mutation-num", help="Mutants per generation (default: population // 2, i.e. 25 of 50).")] = None,
    crossover_num: Annotated[Optional[int], typer.Option("--crossover-num", help="Crossover children per generation (default: population // 2).")] = None,
    m_prob: Annotated[float, typer.Option("--m-prob", help="Per-layer mutation probability of MLP ratio and heads.")] = 0.2,
    s_prob: Annotated[float, typer.Option("--s-prob", help="Probability of resampling depth, and embed dim.")] = 0.4,
    val_subset: Annotated[Optional[int], typer.Option(
        "--val-subset", help="Evaluate on the first N images of the held-out split only.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Evaluation batch size (per process).")] = 256,
    metric: Annotated[str, typer.Option(
        "--metric", help="Fitness: 'loss' = cross-entropy on the held-out split (paper, lower is better); "
        "'top1' = top-1 accuracy (AutoFormer; ranked by top-1 error).")] = "loss",
    no_experts: Annotated[bool, typer.Option(
        "--no-experts", help="Evaluate the bare supernet even with a MoLE checkpoint.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the evolution (and of a carved split).")] = 0,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Where to write the best subnet's JSON (default: <run>/best.json; the run folder always "
        "gets a copy).")] = None,
    latency_budget: Annotated[Optional[float], typer.Option(
        "--latency-budget", help="Upper bound on measured latency in ms at batch 1 on --target (each candidate that "
        "passes the FLOPs/params bounds is materialised and timed once; values are cached per subnet under "
        "<workdir>/latency-cache).")] = None,
    target: Annotated[str, typer.Option(
        "--target", help="Latency target of --latency-budget: torch-cpu, ort-cpu (onnxruntime on the CPU) or "
        "torch-cuda.")] = "torch-cpu",
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
    if run_dir is not None and not resume:
        raise fail(f"unexpected argument {run_dir}; a run folder is only taken with --resume")
    from taslora_core.distributed import init_distributed, shutdown

    ctx = init_distributed(device)
    try:
        _search(ctx, flops, params, min_flops, min_params, counter, ckpt, data, population, iterations, parents,
                mutation_num, crossover_num, m_prob, s_prob, val_subset, batch_size, metric, no_experts, seed,
                workdir, out, resume, run_dir, latency_budget, target)
    except BaseException:
        if ctx.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()  # no barrier: the other ranks may not reach one
        raise
    shutdown(ctx)


def _search(ctx, flops, params, min_flops, min_params, counter, ckpt, data, population, iterations, parents,
            mutation_num, crossover_num, m_prob, s_prob, val_subset, batch_size, metric, no_experts, seed,
            workdir, out, resume, run_dir, latency_budget=None, target="torch-cpu") -> None:
    from taslora_core import search_fitness as SF
    from taslora_core.run_io import load_checkpoint, resolve_mole

    dev, rank, world = str(ctx.device), ctx.rank, ctx.world_size
    out_console = console if rank == 0 else Console(quiet=True)
    say = out_console.print
    started = time.perf_counter()

    given = dict(flops=flops, params=params, min_flops=min_flops, min_params=min_params, counter=counter,
                 ckpt=ckpt, data=data, population=population, iterations=iterations, parents=parents,
                 mutation_num=mutation_num, crossover_num=crossover_num, m_prob=m_prob, s_prob=s_prob,
                 val_subset=val_subset, metric=metric, no_experts=no_experts, seed=seed, out=out,
                 latency_budget=latency_budget, target=target)
    state: dict[str, Any] | None = None
    if resume:
        run = _resume_dir(workdir, run_dir)
        settings = json.loads((run / SETTINGS_JSON).read_text())
        _check_resume_args(given, settings["cli"])
        cli = settings["cli"]
        if iterations != _DEFAULTS["iterations"]:
            cli["iterations"] = iterations  # more iterations extend the same search
        state_file = run / STATE_JSON
        if not state_file.exists():
            raise fail(f"{run} has no {STATE_JSON}: it stopped before finishing its first generation; start anew")
        state = json.loads(state_file.read_text())
        say(f"resuming search {run} from generation {state['next_iteration']} ({len(state['history'])} subnets "
            f"evaluated, {len(state.get('pending', []))} pending)", highlight=False)
    else:
        cli = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items()}
        run = None

    constraints = _constraints(cli)
    config = SearchConfig(
        population=cli["population"], iterations=cli["iterations"], parents=cli["parents"],
        mutation_num=cli["mutation_num"], crossover_num=cli["crossover_num"], m_prob=cli["m_prob"],
        s_prob=cli["s_prob"], seed=cli["seed"], metric=cli["metric"], val_subset=cli["val_subset"],
        batch_size=batch_size, use_experts=not cli["no_experts"],
    )
    if cli["metric"] not in METRICS:
        raise fail(f"unknown --metric '{cli['metric']}'; choose one of {', '.join(METRICS)}")

    # ------------------------------------------------------------------ inputs
    ckpt_given = cli["ckpt"] is not None
    ckpt_path = Path(resolve_mole(workdir, cli["ckpt"])).resolve()
    loaded = load_checkpoint(ckpt_path, device=dev)
    cli["ckpt"] = str(ckpt_path)
    space = loaded.supernet.space
    latency = None
    if cli.get("latency_budget") is not None:
        import dataclasses

        from taslora_deploy.latency_lookup import LatencyTable, default_cache_path

        latency = LatencyTable(loaded.supernet, cli["target"], default_cache_path(workdir, cli["target"], space), ctx=ctx)
        constraints = dataclasses.replace(constraints, latency_fn=latency)
    witness = constraints.check_feasible(space)  # exits 2 with the space's feasible range when impossible
    use_experts = config.use_experts and loaded.mole is not None
    val = SF.load_val_data(loaded, cli["data"], config.val_subset, batch_size, config.seed, device=dev,
                           rank=rank, world_size=world)
    fitness_fn = SF.CheckpointFitness(loaded, val.batches, config.metric, use_experts, dev)

    if run is None and rank == 0:
        run = workspace.new_run(workdir, "searches", "search")
    if rank == 0:
        assert run is not None
        split_file = run / "split.json"
        if loaded.split_path is None and not split_file.exists():
            from taslora_core.data import save_split

            save_split(split_file, val.split)  # a carved split is kept with the search for reproducibility
        if state is None:
            atomic_write_json(run / SETTINGS_JSON, {
                "format": "taslora-search", "cli": cli, "space": space.to_dict(),
                "constraints": constraints.to_dict(), "config": config.to_dict(), "world_size": world,
            })
        kind = "MoLE experts + router" if loaded.kind == "mole" else "plain supernet (AutoFormer's search)"
        say(f"checkpoint: {ckpt_path} [{kind}; {'--ckpt' if ckpt_given else 'latest MoLE run in ' + str(workdir)}]",
            highlight=False, soft_wrap=True)
        if loaded.kind == "mole":
            say(f"supernet:   {loaded.meta.get('supernet_dir')} (recorded in mole.json)", highlight=False, soft_wrap=True)
        say(f"data:       {val.data_cfg.data} ({val.data_source})", highlight=False, soft_wrap=True)
        say(f"split:      {val.split_source}; {val.total} validation images"
            + (f" (first {config.val_subset})" if config.val_subset else "")
            + (f", {world} ranks x ~{val.local}" if world > 1 else "")
            + ("" if val.materialised else ", streamed per candidate"), highlight=False, soft_wrap=True)
        say(f"space:      {space.name}; {constraints.describe_range(space)}", highlight=False, soft_wrap=True)
        say(f"fitness:    validation {'loss' if config.metric == 'loss' else 'top-1 error (1 - top1)'}, "
            f"{'with' if use_experts else 'without'} experts; constraints: {constraints.describe()}"
            + (f" (e.g. {format_amount(constraints.flops_of(space, witness))} FLOPs satisfies them)"
               if constraints.bounded else ""), highlight=False, soft_wrap=True)
        say(f"search:     population {config.population}, {config.iterations} iterations, top-{config.parents}, "
            f"{config.mutation_num} mutants + {config.crossover_num} crossovers, seed {config.seed}; run {run}",
            highlight=False, soft_wrap=True)
        if not constraints.bounded:
            err_console.print("note: no --flops/--params bound given; searching the whole space", highlight=False)

    search = EvolutionSearch(space, fitness_fn, constraints, config,
                             log=lambda m: err_console.print(f"note: {m}", highlight=False) if rank == 0 else None)
    history_path = run / HISTORY_JSONL if run is not None else None
    gen_clock = [time.perf_counter()]

    def on_generation(info: dict[str, Any]) -> None:
        if rank != 0:
            return
        now = time.perf_counter()
        best = info["best"]
        say(
            f"gen {info['generation']:>3}/{info['iterations']}: {info['population_size']:>3} new"
            f" (total {info['evaluated']}), fitness best {info['pop_best']:.4f} median {info['pop_median']:.4f}"
            f" | best so far {best['fitness']:.4f} at {format_amount(best[f'flops_{constraints.counter}'])} FLOPs,"
            f" {format_amount(best['params'])} params [{now - gen_clock[0]:.1f} s]",
            highlight=False, soft_wrap=True,
        )
        gen_clock[0] = now
        if history_path is not None:
            _write_history(history_path, search.history)
        if latency is not None:
            latency.save()

    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank holds the saved state before rank 0 writes the next one
    result = search.run(state_path=run / STATE_JSON if run is not None else None, on_generation=on_generation,
                        resume=state if state is not None else False, save=rank == 0)
    if latency is not None:
        latency.save()
        say(f"latency ({latency.target}): {latency.measured} subnets measured in this run, {len(latency.table)} in "
            f"the cache {latency.cache_path}", highlight=False, soft_wrap=True)
    if rank != 0:
        return
    assert run is not None
    best_path = _write_outputs(run, result, space, constraints, config, cli, loaded, val, use_experts, world,
                               time.perf_counter() - started)
    _top_table(result, constraints, config.metric, out_console)
    for note in result.notes:
        err_console.print(f"note: {note}", highlight=False)
    typer.echo(str(best_path))


# ---------------------------------------------------------------------------------------------- helpers
def _constraints(cli: dict[str, Any]) -> Constraints:
    def amount(key: str) -> float | None:
        value = cli.get(key)
        if value is None:
            return None
        try:
            return parse_amount(value)
        except ValueError as err:
            raise fail(f"--{key.replace('_', '-')}: {err}") from None

    if cli["counter"] not in COUNTERS:
        raise fail(f"unknown --counter '{cli['counter']}'; choose one of {', '.join(COUNTERS)}")
    budget = cli.get("latency_budget")
    return Constraints(flops_max=amount("flops"), flops_min=amount("min_flops"), params_max=amount("params"),
                       params_min=amount("min_params"), counter=cli["counter"], latency_max_ms=budget,
                       latency_target=cli.get("target", "torch-cpu") if budget is not None else None)


def _resume_dir(workdir: Path, run_dir: Path | None) -> Path:
    if run_dir is not None:
        if not (run_dir / SETTINGS_JSON).exists():
            raise fail(f"{run_dir} is not a search run folder ({SETTINGS_JSON} missing); pass one under {workdir}/searches")
        if (run_dir / BEST_JSON).exists():
            raise fail(f"search {run_dir} already finished ({BEST_JSON} exists); start a new search instead")
        return run_dir
    unfinished = [r.path for r in workspace.runs(workdir, "searches", finished_only=False)
                  if (r.path / SETTINGS_JSON).exists() and not (r.path / BEST_JSON).exists()]
    if not unfinished:
        raise fail(f"no unfinished search in {workdir}/searches to resume; start one without --resume")
    return unfinished[-1]


def _check_resume_args(given: dict[str, Any], saved: dict[str, Any]) -> None:
    clashes = []
    for key, value in given.items():
        if key == "iterations":
            continue
        norm = str(value) if isinstance(value, Path) else value
        if norm != _DEFAULTS[key] and norm != saved.get(key):
            clashes.append(f"--{key.replace('_', '-')} {norm} (saved: {saved.get(key)})")
    if clashes:
        raise fail(f"a resumed search keeps its saved settings; drop {', '.join(clashes)}")


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in history))


def _write_outputs(run: Path, result: SearchResult, space, constraints: Constraints, config: SearchConfig,
                   cli: dict[str, Any], loaded, val, use_experts: bool, world: int, wall_s: float) -> Path:
    from taslora_core.plots import plot_fitness_vs_flops

    best = result.best
    _write_history(run / HISTORY_JSONL, result.history)
    doc = {
        **best["subnet"],
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
        "ckpt": cli["ckpt"],
        "ckpt_kind": loaded.kind,
        "use_experts": use_experts,
        "routing_entropy": best.get("routing_entropy"),
        "latency_ms": best.get("latency_ms"),
        "constraints": constraints.to_dict(),
        "seed": config.seed,
        "search_run": str(run),
    }
    atomic_write_json(run / BEST_JSON, doc)
    best_path = run / BEST_JSON
    if cli.get("out"):
        best_path = Path(cli["out"])
        atomic_write_json(best_path, doc)
    plot = plot_fitness_vs_flops(result.history, constraints, best, run / PLOT_PNG, metric=config.metric)
    evals = [r.get("eval_s") for r in result.history if r.get("eval_s") is not None]
    rng = constraints.feasible_range(space)
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
        "latency_ms": best.get("latency_ms"),
        "latency_target": constraints.latency_target,
        "counter": constraints.counter,
        "constraints": constraints.describe(),
        "space_flops_range": list(rng["flops"]),
        "space_params_range": list(rng["params"]),
        "evaluations": len(result.history),
        "generations": result.generations,
        "config": config.to_dict(),
        "ckpt": cli["ckpt"],
        "data": val.data_cfg.data,
        "split": val.split_source,
        "val_images": val.total,
        "world_size": world,
        "wall_s": wall_s,
        "eval_s_mean": sum(evals) / len(evals) if evals else None,
        "plot": str(plot),
        "notes": result.notes,
    })
    return best_path


def _top_table(result: SearchResult, constraints: Constraints, metric: str, out: Console) -> None:
    table = Table(title=f"top 10 of {len(result.history)} evaluated subnets ({constraints.describe()})")
    lat = constraints.latency_max_ms is not None
    cols = ["#", "fitness", "loss", "top1", f"FLOPs ({constraints.counter})", "params"] + (["ms"] if lat else [])
    for col in cols + ["depth", "embed", "heads", "MLP ratios", "gen"]:
        table.add_column(col, justify="right" if col not in ("heads", "MLP ratios") else "left")
    for i, r in enumerate(result.top(10), 1):
        s = r["subnet"]
        table.add_row(
            str(i), f"{r['fitness']:.4f}",
            f"{r['loss']:.4f}" if r.get("loss") is not None else "-",
            f"{r['top1']:.4f}" if r.get("top1") is not None else "-",
            format_amount(r[f"flops_{constraints.counter}"]), format_amount(r["params"]),
            *([f"{r['latency_ms']:.3f}"] if lat else []),
            str(s["depth"]), str(s["embed_dim"]), " ".join(map(str, s["num_heads"])),
            " ".join(f"{x:g}" for x in s["mlp_ratio"]), str(r["generation"]),
        )
    out.print(table)


__all__ = ["search_cmd", "SearchError"]
