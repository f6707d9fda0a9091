"""`fit_latency_model`: measure a designed set of subnets on a target, fit a latency model per batch size, score it
on held-out subnets, write latency-model.json (`taslora latency fit`). The model itself (its file, its prediction)
is `taslora_core.search.latency_model`'s; this module measures and fits.

Per batch size: the design's subnets (`search.latency_design`: the extremes of every dimension, every block type,
then balanced mixed subnets) and `holdout` random others are timed on the target by the search's own lookup
(`latency_lookup.LatencyTable.measure_many`: all runners prepared, then timed in shuffled rounds, a subnet whose
fastest round no other confirms timed again, the median of the confirmed rounds kept), so the model is fitted on the same numbers the search verifies against. The model's form is chosen by
leave-one-out cross-validation on the fitting subnets (`search.latency_fit.choose_ridge`); the held-out subnets
only score it, beside FLOPs as a proxy fitted on the same subnets. ONNX files are assembled from exported parts
(`measure_onnx`: each distinct stem, block shape and tail exported once, then chained in milliseconds into the
graph a whole export writes), shared by every batch size, kept under the workspace and reused by later fits. The measurements also fill the search's latency cache.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taslora_core.search.latency_design import design_subnets, heldout_subnets
from taslora_core.search.latency_fit import accuracy, choose_ridge, cliff_pairs, fit_terms, flops_proxy
from taslora_core.search.latency import check_measure
from taslora_core.search.latency_model import LatencyModel, host_name, measurement_stem, write_latency_model
from taslora_core.search.measures import flops_of
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_deploy.latency_lookup import (
    LatencyTable, LatencyUnavailable, check_target, default_cache_path, default_max_rounds, runtime_versions,
)

Progress = Callable[[str], None]
EXPORT_DIR = "latency-exports"
"""Where a fit keeps its ONNX files under the workspace (keyed by torch version, space and subnet), reused by
later fits."""


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
    """What each timing keeps of its runs: 'median' (the default: on a shared 2-core machine, torch-cpu, 2026-12-07,
    its held-out share was 97% where 'min' gave 16-19%, docs/results.md) or 'min' (the fastest run)."""
    rounds: int = 3
    max_rounds: int | None = None
    """Most passes per subnet: after `rounds`, a subnet whose fastest pass is not confirmed by another within +5%
    is timed again until it is (`latency_lookup.confirmed_value`); default 2 * rounds + 1."""
    paired: bool = True
    """Time each subnet in interleaved pairs with one reference subnet and keep the ratio
    (`LatencyTable.measure_many`): it holds beside another process whose phases change the machine's speed."""
    warmup: int = 10
    iters: int = 5
    """The least samples per timing; each timing then runs until its statistic is known (+-2% at 95%) or
    `max_time_s` passed (`timing.time_until_known`)."""
    max_time_s: float = 0.25
    workdir: Path = Path("taslora-runs")
    out: Path | None = None
    """The model file (one batch size) or a folder (b<batch>/latency-model.json each); default under
    <workdir>/latency-models/."""
    export_dir: Path | None = None
    """Keep the subnets' ONNX files here (reused by later fits); default: <workdir>/latency-exports."""

    def __post_init__(self) -> None:
        self.batches = tuple(dict.fromkeys(int(b) for b in self.batches))
        if not self.batches:
            raise LatencyUnavailable("--batch needs at least one batch size (e.g. 1 or 1,32)")
        for b in self.batches:
            check_measure(b, self.statistic, "--batch", "--statistic")
        if self.samples < 8:
            raise LatencyUnavailable(f"--samples must be at least 8 (a model has 7 shared terms), got {self.samples}")
        if self.max_rounds is None:
            self.max_rounds = default_max_rounds(self.rounds)
        if (self.holdout < 0 or self.rounds < 1 or self.max_rounds < self.rounds or self.iters < 2 or self.warmup < 0
                or not self.max_time_s > 0):
            raise LatencyUnavailable("--holdout, --warmup must be >= 0, --rounds >= 1, --max-rounds >= --rounds, "
                                     "--iters >= 2 and --max-time > 0")
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
    export_dir = config.export_dir or Path(config.workdir) / EXPORT_DIR
    load_before = _load_average()
    for batch in config.batches:
        table = LatencyTable(supernet, config.target, None, config.warmup, config.iters, config.threads,
                             batch=batch, export_dir=export_dir, statistic=config.statistic,
                             max_time_s=config.max_time_s)
        table.measure_many([*design, *held], config.rounds, config.seed, _reporter(say, batch), config.max_rounds,
                           config.paired)
        measured, export_s = measured + table.measured, export_s + table.export_s
        _fill_cache(table, config.workdir)
        model = build_model(space, config, batch, design, held, table.table, table.rounds, table.timings)
        model.info["fit"]["unconfirmed"] = table.unsettled
        model.info["fit"]["reference"] = table.reference
        model.info["fit"]["load_average"] = {"before": load_before, "after": _load_average()}
        paths[batch] = write_latency_model(_out_path(config, space, batch), model)
        models[batch] = model
        say(f"batch {batch}: {model.describe()} -> {paths[batch]}")
    return FitResult(paths, models, measured, export_s, time.perf_counter() - start)


def build_model(space: SearchSpace, config: FitConfig, batch: int, design: Sequence[Subnet], held: Sequence[Subnet],
                values: dict[str, float], rounds: dict[str, list[float]] | None = None,
                timings: Sequence[tuple[int, bool]] = ()) -> LatencyModel:
    """The model of one batch size from measured `values` ({LatencyTable.key: ms}; `rounds`: the per-round
    values; `timings`: (samples, known) of each timing): form chosen by cross-validation on `design`, scored on
    `held` (with the other forms and FLOPs as the proxy alongside)."""
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
        "fit": {"samples": len(design), "heldout": len(held), "rounds": config.rounds,
                "max_rounds": config.max_rounds, "warmup": config.warmup,
                "iters": config.iters, "max_time_s": config.max_time_s, "timings": timing_summary(timings),
                "seed": config.seed, "cv_mape": cv, "noise": noise([rounds.get(key(s)) for s in [*design, *held]]),
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
    model = LatencyModel(target=config.target, batch=batch, space=space, terms=terms, threads=config.threads,
                         statistic=config.statistic, host=host_name(), runtime=runtime_versions(config.target),
                         info=info)
    model.info["quality"] = model.quality()
    return model


def timing_summary(timings: Sequence[tuple[int, bool]]) -> dict[str, float | int | None]:
    """How the timings of a fit went: how many, their samples (median, max) and the share that ended known
    (+-2% at 95%) rather than at the time cap."""
    if not timings:
        return {"timings": 0, "samples_median": None, "samples_max": None, "known_share": None}
    samples = [n for n, _known in timings]
    return {"timings": len(timings), "samples_median": float(statistics.median(samples)), "samples_max": max(samples),
            "known_share": sum(known for _n, known in timings) / len(timings)}


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


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): a fit records how busy the machine was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _fill_cache(table: LatencyTable, workdir: Path) -> None:
    """Add the fit's measurements to the search's latency cache of this target and batch (same host)."""
    path = default_cache_path(workdir, table.target, table.space, table.batch, table.statistic)
    cache = LatencyTable(table.supernet, table.target, path, table.warmup, table.iters, table.threads,
                         batch=table.batch, statistic=table.statistic)
    cache.table.update(table.table)
    cache.save()


def _out_path(config: FitConfig, space: SearchSpace, batch: int) -> Path:
    if config.out is None:
        return Path(config.workdir) / "latency-models" / measurement_stem(config.target, batch, config.statistic, space)
    return Path(config.out) / f"b{batch}" if len(config.batches) > 1 else Path(config.out)


def _reporter(say: Progress, batch: int) -> Callable[[str, int, int], None]:
    """measure_many's progress as a line every ~10% of each stage."""

    def report(stage: str, done: int, total: int) -> None:
        if done == total or done % max(total // 10, 1) == 0:
            say(f"  batch {batch}: {'prepared' if stage == 'prepare' else 'timed'} {done}/{total}")

    return report
