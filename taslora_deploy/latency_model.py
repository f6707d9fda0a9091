"""`fit_latency_model`: measure a designed set of subnets on a target, fit a latency model per batch size, score it
on held-out subnets, write latency-model.json (`taslora latency fit`).

Per batch size: the design's subnets (`search.latency_design`: the extremes of every dimension, every block type,
then balanced mixed subnets) and `holdout` random others are timed on the target by the search's own lookup
(`latency_lookup.LatencyTable.measure_many`: all runners prepared, then timed in shuffled rounds, median of the
rounds), so the model is fitted on the same numbers the search verifies against. The model's form is chosen by
leave-one-out cross-validation on the fitting subnets (`search.latency_fit.choose_ridge`); the held-out subnets
only score it, beside FLOPs as a proxy fitted on the same subnets. ONNX files are exported once per subnet and
shared by every batch size (and kept with `export_dir`). The measurements also fill the search's latency cache.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taslora_core.search.latency_design import design_subnets, heldout_subnets
from taslora_core.search.latency_fit import accuracy, choose_ridge, cliff_pairs, fit_terms, flops_proxy
from taslora_core.search.latency_model import LatencyModel, host_name, space_hash, write_latency_model
from taslora_core.search.measures import flops_of
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_deploy.latency_lookup import (
    STATISTICS, LatencyTable, LatencyUnavailable, check_target, default_cache_path, runtime_versions,
)

Progress = Callable[[str], None]


@dataclass
class FitConfig:
    """What `fit_latency_model` measures and where it writes."""

    target: str = "ort-cpu"
    batches: Sequence[int] = (1,)
    samples: int = 64
    """Subnets measured to fit the model (the design's first `samples`)."""
    holdout: int = 32
    """Random subnets measured only to score the model."""
    seed: int = 0
    threads: int | None = 1
    statistic: str = "median"
    """What each timing keeps of its runs: 'median', or 'min' on a machine shared with other jobs."""
    rounds: int = 3
    warmup: int = 10
    iters: int = 30
    workdir: Path = Path("taslora-runs")
    out: Path | None = None
    """The model file (one batch size) or a folder (b<batch>/latency-model.json each); default under
    <workdir>/latency-models/."""
    export_dir: Path | None = None
    """Keep the subnets' ONNX files here (reused by later fits); default: a temporary folder."""

    def __post_init__(self) -> None:
        self.batches = tuple(dict.fromkeys(int(b) for b in self.batches))
        if not self.batches or min(self.batches) < 1:
            raise LatencyUnavailable(f"--batch must be at least 1, got {list(self.batches)}")
        if self.samples < 8:
            raise LatencyUnavailable(f"--samples must be at least 8 (a model has 7 shared terms), got {self.samples}")
        if self.holdout < 0 or self.rounds < 1 or self.iters < 1 or self.warmup < 0:
            raise LatencyUnavailable("--holdout, --warmup must be >= 0 and --rounds, --iters >= 1")
        if self.statistic not in STATISTICS:
            raise LatencyUnavailable(f"unknown --statistic '{self.statistic}'; choose one of {', '.join(STATISTICS)}")
        check_target(self.target)


@dataclass
class FitResult:
    """Where each batch size's model was written, the models, and what fitting cost."""

    paths: dict[int, Path]
    models: dict[int, LatencyModel]
    measured: int
    export_s: float
    wall_s: float


def measured_supernet(space: str | None, ckpt: Path | None, workdir: Path, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """(the supernet whose subnets are measured, where it came from): a fresh one of `space` (preset or YAML), or
    the checkpoint's (`ckpt`, default the latest MoLE run of the workspace). Only shapes matter to latency."""
    if space is not None:
        if ckpt is not None:
            raise LatencyUnavailable("give --space or --ckpt, not both (a latency model is per search space)")
        from taslora_core.supernet import Supernet

        torch.manual_seed(seed)
        return Supernet(SearchSpace.resolve(space)).eval(), "--space"
    from taslora_core.run_io import load_checkpoint, resolve_mole

    path = resolve_mole(workdir, ckpt)
    return load_checkpoint(path).supernet.eval(), f"the space of {path}"


def fit_latency_model(supernet: torch.nn.Module, config: FitConfig, progress: Progress | None = None) -> FitResult:
    """Measure, fit, score and write one latency model per batch size of `config` (shapes of `supernet.space`;
    its weights do not matter). Raises LatencyUnavailable when the target cannot run here."""
    say = progress or (lambda message: None)
    start = time.perf_counter()
    space: SearchSpace = supernet.space  # type: ignore[assignment]
    design = design_subnets(space, config.samples, config.seed)
    held = heldout_subnets(space, config.holdout, design, config.seed)
    say(f"measuring {len(design)} design + {len(held)} held-out subnets of space '{space.name}' on {config.target} "
        f"at batch {', '.join(map(str, config.batches))} ({config.rounds} rounds each)")
    paths: dict[int, Path] = {}
    models: dict[int, LatencyModel] = {}
    measured, export_s = 0, 0.0
    with tempfile.TemporaryDirectory(prefix="taslora-latfit-") as tmp:
        export_dir = config.export_dir or Path(tmp)
        for batch in config.batches:
            table = LatencyTable(supernet, config.target, None, config.warmup, config.iters, config.threads,
                                 batch=batch, export_dir=export_dir, statistic=config.statistic)
            table.measure_many([*design, *held], config.rounds, config.seed, _reporter(say, batch))
            measured, export_s = measured + table.measured, export_s + table.export_s
            _fill_cache(table, config.workdir)
            model = build_model(space, config, batch, design, held, table.table, table.rounds)
            paths[batch] = write_latency_model(_out_path(config, space, batch), model)
            models[batch] = model
            say(f"batch {batch}: {model.describe()} -> {paths[batch]}")
    return FitResult(paths, models, measured, export_s, time.perf_counter() - start)


def build_model(space: SearchSpace, config: FitConfig, batch: int, design: Sequence[Subnet], held: Sequence[Subnet],
                values: dict[str, float], rounds: dict[str, list[float]] | None = None) -> LatencyModel:
    """The model of one batch size from measured `values` ({LatencyTable.key: ms}; `rounds`: the per-round
    medians): form chosen by cross-validation on `design`, scored on `held` (with the other forms and FLOPs as
    the proxy alongside)."""
    key, rounds = LatencyTable.key, rounds or {}
    y_fit = [values[key(s)] for s in design]
    y_held = [values[key(s)] for s in held]
    ridge, cv = choose_ridge(space, design, y_fit)
    terms = fit_terms(space, design, y_fit, ridge)
    forms = {}
    for name, r in (("features", None), ("lookup", 0.0), ("chosen", ridge)):
        fitted = terms if r == ridge else fit_terms(space, design, y_fit, r)
        forms[name] = {"ridge": r, "heldout": accuracy([fitted.predict(space, s) for s in held], y_held) if held else None}
    counter = "autoformer"
    a, b = flops_proxy([flops_of(space, s, counter) for s in design], y_fit)
    proxy = [a + b * flops_of(space, s, counter) for s in held]
    predicted = [terms.predict(space, s) for s in held]
    info: dict[str, Any] = {
        "fit": {"samples": len(design), "heldout": len(held), "rounds": config.rounds, "warmup": config.warmup,
                "iters": config.iters, "seed": config.seed, "cv_mape": cv, "noise": noise([rounds.get(key(s)) for s in [*design, *held]]),
                "fit_mape": accuracy([terms.predict(space, s) for s in design], y_fit)["mape"]},
        "heldout": accuracy(predicted, y_held) if held else {},
        "flops_proxy": {"counter": counter, "intercept_ms": a, "ms_per_flop": b,
                        "heldout": accuracy(proxy, y_held) if held else {}},
        "forms": forms,
        "cliffs": cliff_pairs([flops_of(space, s, counter) for s in held], y_held, predicted,
                              rounds=[rounds.get(key(s)) for s in held]) if held else {},
        "measurements": [{"subnet": s.to_dict(), "latency_ms": values[key(s)], "rounds_ms": rounds.get(key(s)),
                          "role": role}
                         for role, group in (("fit", design), ("heldout", held)) for s in group],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return LatencyModel(target=config.target, batch=batch, space=space, terms=terms, threads=config.threads,
                        statistic=config.statistic, host=host_name(), runtime=runtime_versions(config.target),
                        info=info)


def noise(rounds: Sequence[list[float] | None], within: float = 0.10) -> dict[str, float | None]:
    """How repeatable the measurements were: per subnet the spread of its per-round values ((max - min) /
    median; the median and p90 over the subnets), and the share of single rounds within +-`within` of the
    median of the subnet's other rounds (what one measurement can promise: the ceiling of a model's share
    within +-10%, scored against such measurements). None without repeated rounds."""
    repeated = [r for r in rounds if r and len(r) > 1]
    if not repeated:
        return {"round_spread_median": None, "round_spread_p90": None, "repeat_within_10pct": None}
    spreads = sorted((max(r) - min(r)) / statistics.median(r) for r in repeated)
    agree = [abs(v - statistics.median(r[:i] + r[i + 1:])) <= within * statistics.median(r[:i] + r[i + 1:])
             for r in repeated for i, v in enumerate(r)]
    return {"round_spread_median": float(statistics.median(spreads)),
            "round_spread_p90": float(spreads[min(len(spreads) - 1, int(0.9 * len(spreads)))]),
            "repeat_within_10pct": sum(agree) / len(agree)}


def _fill_cache(table: LatencyTable, workdir: Path) -> None:
    """Add the fit's measurements to the search's latency cache of this target and batch (same host)."""
    path = default_cache_path(workdir, table.target, table.space, table.batch, table.statistic)
    cache = LatencyTable(table.supernet, table.target, path, table.warmup, table.iters, table.threads,
                         batch=table.batch, statistic=table.statistic)
    cache.table.update(table.table)
    cache.save()


def _out_path(config: FitConfig, space: SearchSpace, batch: int) -> Path:
    if config.out is None:
        stat = "" if config.statistic == "median" else f"-{config.statistic}"
        name = f"{config.target}-b{batch}{stat}-{host_name()}-{space_hash(space)}"
        return Path(config.workdir) / "latency-models" / name
    return Path(config.out) / f"b{batch}" if len(config.batches) > 1 else Path(config.out)


def _reporter(say: Progress, batch: int) -> Callable[[str, int, int], None]:
    """measure_many's progress as a line every ~10% of each stage."""

    def report(stage: str, done: int, total: int) -> None:
        if done == total or done % max(total // 10, 1) == 0:
            say(f"  batch {batch}: {'prepared' if stage == 'prepare' else 'timed'} {done}/{total}")

    return report
