"""`run_search`: the search stage as a library verb. It owns the search's run folder (settings, state for resume,
history, best.json, summary, plot), resumes an interrupted search, and returns a typed `SearchRun`.

    from taslora_core.search import Constraints, SearchConfig, SearchRunConfig, run_search
    run = run_search(SearchRunConfig(budget=Constraints.from_amounts(flops="20M"), search=SearchConfig(iterations=5)))
    run.best_subnet, run.best_path

Printing is the caller's: progress arrives through a `SearchEvents` object. Under torch.distributed every rank
calls the verb with its `DistContext`; the ranks share the validation batches and only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taslora_core import workspace
from taslora_core.complexity import format_amount
from taslora_core.distributed import DistContext
from taslora_core.search import run_folder as files
from taslora_core.search.config import SearchConfig, SearchError
from taslora_core.search.constraints import Constraints
from taslora_core.search.evolution import EvolutionSearch, Record, SearchResult
from taslora_core.search.latency import LatencyLookup
from taslora_core.search.latency_setup import LatencyFactory, LatencyOptions, setup_latency
from taslora_core.search.feasible import check_feasible
from taslora_core.search.messages import non_binding
from taslora_core.search.pareto_outputs import write_pareto_outputs
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_core.workspace import DEFAULT_WORKDIR

AMOUNT_OPTIONS = ("flops", "params", "min_flops", "min_params")


@dataclass
class SearchRunConfig:
    """What `run_search` needs: the budget, the evolution's settings and where the inputs and outputs live."""

    budget: Constraints = field(default_factory=Constraints)
    search: SearchConfig = field(default_factory=SearchConfig)
    ckpt: Path | None = None
    """MoLE run folder (or plain supernet run folder); None = the latest MoLE run of the workspace."""
    data: str | None = None
    """fmnist or an ImageNet-style folder; None = the data recorded with the checkpoint."""
    workdir: Path = DEFAULT_WORKDIR
    out: Path | None = None
    """Extra copy of best.json (the run folder always gets one)."""
    resume: bool = False
    run_dir: Path | None = None
    """With `resume`: the run folder to continue (default: the newest unfinished search)."""
    latency: LatencyOptions = field(default_factory=LatencyOptions)
    """The latency model, batch size and verification of a latency budget or objective."""

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if self.run_dir is not None and not self.resume:
            raise SearchError(f"unexpected argument {self.run_dir}; a run folder is only taken with --resume")

    def options(self) -> dict[str, Any]:
        """The run's options as search.json records them under "cli" (flat, the command line's names)."""
        b, s = self.budget, self.search
        return {
            "flops": b.flops_max, "params": b.params_max, "min_flops": b.flops_min, "min_params": b.params_min,
            "counter": b.counter, "ckpt": _text(self.ckpt), "data": self.data, "population": s.population,
            "iterations": s.iterations, "parents": s.parents, "mutation_num": s.mutation_num,
            "crossover_num": s.crossover_num, "m_prob": s.m_prob, "s_prob": s.s_prob, "val_subset": s.val_subset,
            "metric": s.metric, "no_experts": not s.use_experts, "seed": s.seed, "out": _text(self.out),
            "latency_budget": b.latency_max_ms,
            "target": b.latency_target or s.latency_target,  # None: the latency model's, or the default
            "objectives": s.objectives, "latency_model": _text(self.latency.model),
            "latency_batch": self.latency.batch, "latency_statistic": self.latency.statistic,
            "latency_slack": self.latency.slack,
            "verify_latency": self.latency.verify,
        }

    @staticmethod
    def from_options(options: dict[str, Any], **runtime: Any) -> "SearchRunConfig":
        """Inverse of `options` (amounts may be text such as '1.3G', as older runs saved them); `runtime` adds
        the fields search.json does not hold (workdir, resume, run_dir) and `batch_size` of the SearchConfig."""
        o = dict(options)
        budget = Constraints.from_amounts(o.get("flops"), o.get("params"), o.get("min_flops"), o.get("min_params"),
                                          o.get("counter", "autoformer"), o.get("latency_budget"),
                                          o.get("target"), o.get("latency_batch") or 1)
        search = SearchConfig(
            population=o["population"], iterations=o["iterations"], parents=o["parents"],
            mutation_num=o.get("mutation_num"), crossover_num=o.get("crossover_num"), m_prob=o["m_prob"],
            s_prob=o["s_prob"], seed=o["seed"], metric=o["metric"], val_subset=o.get("val_subset"),
            use_experts=not o.get("no_experts", False), batch_size=runtime.pop("batch_size", 256),
            objectives=o.get("objectives"), latency_target=o.get("target"),
        )
        latency = LatencyOptions(model=_path(o.get("latency_model")), batch=o.get("latency_batch"),
                                 statistic=o.get("latency_statistic"), slack=o.get("latency_slack"),
                                 verify=o.get("verify_latency", True))
        return SearchRunConfig(budget=budget, search=search, ckpt=_path(o.get("ckpt")), data=o.get("data"),
                               out=_path(o.get("out")), latency=latency, **runtime)


@dataclass
class SearchStart:
    """What a search runs on, reported once before the first generation (rank 0)."""

    run_dir: Path
    ckpt: Any  # taslora_core.run_io.LoadedCheckpoint
    ckpt_given: bool
    workdir: Path
    val: Any  # taslora_core.search.fitness.ValData
    space: SearchSpace
    constraints: Constraints
    witness: Subnet
    config: SearchConfig
    use_experts: bool
    world_size: int


class SearchEvents:
    """Progress of `run_search` (rank 0 only); every method is a no-op here, a caller overrides what it shows."""

    def resuming(self, run_dir: Path, state: dict[str, Any]) -> None:
        """A saved search is about to continue from `state`."""

    def started(self, start: SearchStart) -> None:
        """Inputs are loaded and the run folder exists; the first generation is next."""

    def generation(self, info: dict[str, Any]) -> None:
        """A generation finished (EvolutionSearch's on_generation dict, plus 'seconds' since the last one)."""

    def note(self, message: str) -> None:
        """Something the user should know (a smaller population, a missing bound)."""

    def latency(self, lookup: LatencyLookup) -> None:
        """The latency lookup after the search (measured subnets, cache path)."""


@dataclass
class SearchRun:
    """The outcome of `run_search`: where its files are and what it found."""

    run_dir: Path | None
    """The run folder (None on ranks other than 0, which write nothing)."""
    best_path: Path | None
    result: SearchResult
    space: SearchSpace
    constraints: Constraints
    config: SearchConfig
    pareto: dict[str, Any] | None = None
    """A Pareto search's outputs on rank 0: pareto_json, pareto_png, front, latency_report (see pareto_outputs)."""
    latency_check: Any = None
    """What verifying a latency model's pick on the target did (`search.latency_verify.LatencyCheck`), or None."""

    @property
    def best(self) -> Record:
        """The best evaluation record (subnet, fitness, FLOPs, params, ...)."""
        return self.result.best

    @property
    def best_subnet(self) -> Subnet:
        """The best subnet."""
        return Subnet.from_dict(self.result.best["subnet"])


def resumed_config(given: SearchRunConfig, saved_options: dict[str, Any]) -> SearchRunConfig:
    """The saved run's config, refusing an option given with another value than the saved one (an option left
    at its default is not 'given'); a different --iterations extends the search. Runtime fields come from `given`."""
    saved = SearchRunConfig.from_options(saved_options, workdir=given.workdir, resume=True, run_dir=given.run_dir,
                                         batch_size=given.search.batch_size)
    defaults = SearchRunConfig().options()
    derived = SearchConfig(population=given.search.population)  # children default to population // 2
    defaults.update(mutation_num=derived.mutation_num, crossover_num=derived.crossover_num)
    now, then = given.options(), saved.options()
    clashes = [f"--{key.replace('_', '-')} {_shown(key, value)} (saved: {_shown(key, then[key])})"
               for key, value in now.items()
               if key != "iterations" and value != defaults[key] and value != then[key]]
    if clashes:
        raise SearchError(f"a resumed search keeps its saved settings; drop {', '.join(clashes)}")
    if given.search.iterations != SearchConfig().iterations:
        saved.search.iterations = given.search.iterations  # more iterations extend the same search
    return saved


def run_search(config: SearchRunConfig, ctx: DistContext | None = None, events: SearchEvents | None = None,
               latency_factory: LatencyFactory | None = None) -> SearchRun:
    """Search the best subnet within `config.budget` into a new run folder (or continue one with `resume`).

    The fitness is the validation loss (or top-1 error) of each candidate with its experts folded in; see
    `taslora_core.search.fitness`. A latency budget needs `latency_factory` (a measured-latency lookup).
    Raises SearchError / InfeasibleConstraints (bad settings, nothing feasible) and the data/checkpoint errors.
    """
    from taslora_core.data import save_split
    from taslora_core.run_io import load_checkpoint, resolve_mole
    from taslora_core.search.fitness import CheckpointFitness, load_val_data

    ctx = ctx or DistContext()
    events = events if ctx.is_main and events is not None else SearchEvents()
    started = time.perf_counter()
    run: Path | None = None
    state: dict[str, Any] | None = None
    if config.resume:
        run = files.find_resumable(config.workdir, config.run_dir)
        config = resumed_config(config, files.read_settings(run)["cli"])
        state = files.read_state(run)
        events.resuming(run, state)

    ckpt_given = config.ckpt is not None
    config = dataclasses.replace(config, ckpt=Path(resolve_mole(config.workdir, config.ckpt)).resolve())
    loaded = load_checkpoint(config.ckpt, device=str(ctx.device))
    space = loaded.supernet.space
    cfg = config.search
    latency = setup_latency(config.budget, cfg, config.latency, loaded.supernet, latency_factory)
    constraints, cfg, lookup = latency.constraints, latency.config, latency.lookup
    for message in latency.notes():
        events.note(message)
    witness = check_feasible(constraints, space)  # InfeasibleConstraints names the space's range
    use_experts = cfg.use_experts and loaded.mole is not None
    val = load_val_data(loaded, config.data, cfg.val_subset, cfg.batch_size, cfg.seed, device=str(ctx.device),
                        ctx=ctx)
    fitness_fn = latency.wrap(CheckpointFitness(loaded, val.batches, cfg.metric, use_experts, str(ctx.device)))

    if ctx.is_main:
        run = run or workspace.new_run(config.workdir, "searches", "search")
        if loaded.split_path is None and not (run / files.SPLIT_JSON).exists():
            save_split(run / files.SPLIT_JSON, val.split)  # a carved split is kept with the search
        if state is None:
            files.write_settings(run, config.options(), space, constraints, cfg, ctx.world_size)
        events.started(SearchStart(run, loaded, ckpt_given, config.workdir, val, space, constraints, witness, cfg,
                                   use_experts, ctx.world_size))
        if not constraints.bounded:
            events.note("no --flops/--params bound given; searching the whole space")

    search = EvolutionSearch(space, fitness_fn, constraints, cfg, log=events.note)
    if state is None:  # a resumed search has these notes in its saved state already
        for message in non_binding(constraints, space):
            search.add_note(message)
    clock = [time.perf_counter()]

    def on_generation(info: dict[str, Any]) -> None:
        if not ctx.is_main:
            return
        now = time.perf_counter()
        events.generation({**info, "seconds": now - clock[0]})
        clock[0] = now
        assert run is not None
        files.write_history(run, search.history)
        if lookup is not None:
            lookup.save()

    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()  # every rank holds the saved state before rank 0 writes the next one
    result = search.run(state_path=run / files.STATE_JSON if run is not None else None,
                        on_generation=on_generation, resume=state if state is not None else False, save=ctx.is_main)
    if run is not None:
        files.write_history(run, search.history)
    result, check = latency.verify(result)  # measures what a model-screened search returns
    if lookup is not None:
        lookup.save()
        events.latency(lookup)
    done = SearchRun(run_dir=None, best_path=None, result=result, space=space, constraints=constraints, config=cfg)
    if not ctx.is_main:
        return done
    assert run is not None
    source = {"ckpt": str(config.ckpt), "ckpt_kind": loaded.kind, "use_experts": use_experts,
              "data": val.data_cfg.data, "split": val.split_source, "val_images": val.total,
              "world_size": ctx.world_size}
    extra = {"latency_verification": check.to_dict() if check is not None else None,
             "latency_model": latency.model_record()}
    pareto = write_pareto_outputs(run, result, space, constraints, cfg, source, lookup) if cfg.objectives else None
    best_path = files.write_outputs(run, result, space, constraints, cfg, source, config.out,
                                    time.perf_counter() - started, extra={**extra, **(pareto or {})})
    return dataclasses.replace(done, run_dir=run, best_path=best_path, pareto=pareto, latency_check=check)


def _text(path: Path | str | None) -> str | None:
    return None if path is None else str(path)


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


def _shown(key: str, value: Any) -> str:
    return format_amount(value) if key in AMOUNT_OPTIONS and value is not None else str(value)
