"""What `taslora search` prints: progress (`SearchPrinter`), the top-10 or Pareto-front table, the latency report
and what verifying a latency model's pick on the target did."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.table import Table

from taslora_cli.app import console, err_console
from taslora_core.complexity import format_amount
from taslora_core.search import Constraints, LatencyLookup, SearchEvents, SearchRun, SearchStart
from taslora_core.search.messages import describe, describe_range
from taslora_core.search.objectives import objective_value
from taslora_core.subnet import Subnet
from taslora_core.train.progress import format_duration

_BUDGET = Constraints()


class SearchPrinter(SearchEvents):
    """Prints the search's progress (rank 0 only: run_search reports nothing on the other ranks)."""

    counter = _BUDGET.counter  # the FLOPs counter of the bounds, known once the search started
    _seconds: float = 0.0  # generations timed in this session (a resumed search starts counting afresh)
    _timed: int = 0

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
        _say(f"space:      {s.space.name}; {describe_range(cons, s.space)}")
        _say(f"fitness:    validation {'loss' if cfg.metric == 'loss' else 'top-1 error (1 - top1)'}, "
             f"{'with' if s.use_experts else 'without'} experts; constraints: {describe(cons)}"
             + (f" (e.g. {format_amount(cons.flops_of(s.space, s.witness))} FLOPs satisfies them)"
                if cons.bounded else ""))
        _say(f"search:     population {cfg.population}, {cfg.iterations} iterations, top-{cfg.parents}, "
             f"{cfg.mutation_num} mutants + {cfg.crossover_num} crossovers, seed {cfg.seed}; run {s.run_dir}")

    def generation(self, info: dict[str, Any]) -> None:
        best, counter = info["best"], self.counter
        self._seconds += info["seconds"]
        self._timed += 1
        left = info["iterations"] - info["generation"]
        eta = format_duration(self._seconds / self._timed * left)
        _say(f"gen {info['generation']:>3}/{info['iterations']}: {info['population_size']:>3} new"
             f" (total {info['evaluated']}), fitness best {info['pop_best']:.4f} median {info['pop_median']:.4f}"
             f" | best so far {best['fitness']:.4f} at {format_amount(best[f'flops_{counter}'])} FLOPs,"
             f" {format_amount(best['params'])} params"
             + (f" | front {info['front_size']}" if "front_size" in info else "") + f" [{info['seconds']:.1f} s, ETA {eta}]")

    def note(self, message: str) -> None:
        err_console.print(f"note: {message}", highlight=False, soft_wrap=True)

    def latency(self, lookup: LatencyLookup) -> None:
        _say(f"latency ({lookup.target}, batch {lookup.batch}): {lookup.measured} subnets measured in this run, {len(lookup.table)} in "
             f"the cache {lookup.cache_path}")


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def top_table(run: SearchRun) -> None:
    """The 10 best evaluated subnets (ms: measured, or ~predicted by the latency model; x: rejected when measured)."""
    cons = run.constraints
    table = Table(title=f"top 10 of {len(run.result.history)} evaluated subnets ({describe(cons)})")
    lat = cons.latency_max_ms is not None
    cols = ["#", "fitness", "loss", "top1", f"FLOPs ({cons.counter})", "params"] + (["ms"] if lat else [])
    for col in cols + ["depth", "embed", "heads", "MLP ratios", "gen"]:
        table.add_column(col, justify="right" if col not in ("heads", "MLP ratios") else "left")
    for i, r in enumerate(run.result.top(10), 1):
        table.add_row(
            str(i), f"{r['fitness']:.4f}",
            f"{r['loss']:.4f}" if r.get("loss") is not None else "-",
            f"{r['top1']:.4f}" if r.get("top1") is not None else "-",
            *_cost_and_shape_cells(r, cons.counter, lat),
        )
    console.print(table)
    verification_lines(run)


def _cost_and_shape_cells(record: dict[str, Any], counter: str, latency: bool) -> list[str]:
    """The cells both tables end with: FLOPs, params, (ms), depth, embed, heads, MLP ratios, generation."""
    s = record["subnet"]
    return [format_amount(record[f"flops_{counter}"]), format_amount(record["params"]),
            *([latency_cell(record)] if latency else []),
            str(s["depth"]), str(s["embed_dim"]), " ".join(map(str, s["num_heads"])),
            " ".join(f"{x:g}" for x in Subnet.from_dict(s).mlp_ratios), str(record["generation"])]


def front_table(run: SearchRun) -> None:
    """The Pareto front as a table (cost ascending; the single-objective pick marked), then the latency report."""
    assert run.pareto is not None
    cons, res = run.constraints, run.result
    quality, cost = res.objectives or ("loss", "flops")
    pick_key = res.best["key"]
    table = Table(title=f"Pareto front: {len(res.front)} of {len(res.history)} evaluated subnets, {quality} vs "
                        f"{cost} ({describe(cons)}); * = single-objective pick (best.json)")
    lat = any(r.get("latency_ms") is not None or r.get("latency_predicted_ms") is not None for r in res.front)
    cols = ["#", quality, "top1", f"FLOPs ({cons.counter})", "params"] + (["ms"] if lat else [])
    for col in cols + ["depth", "embed", "heads", "MLP ratios", "gen"]:
        table.add_column(col, justify="right" if col not in ("heads", "MLP ratios") else "left")
    for i, r in enumerate(res.front, 1):
        q = objective_value(r, quality, cons.counter)
        table.add_row(
            f"{i}{'*' if r['key'] == pick_key else ''}", f"{q:.4f}" if math.isfinite(q) else "-",
            f"{r['top1']:.4f}" if r.get("top1") is not None else "-",
            *_cost_and_shape_cells(r, cons.counter, lat),
        )
    console.print(table)
    verification_lines(run)
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


def latency_cell(record: dict[str, Any]) -> str:
    """'0.412' measured, '~0.398' predicted only, '0.455x' measured over the budget (rejected), '-' unknown."""
    if record.get("latency_ms") is not None:
        return f"{record['latency_ms']:.3f}{'x' if record.get('latency_rejected') else ''}"
    if record.get("latency_predicted_ms") is not None:
        return f"~{record['latency_predicted_ms']:.3f}"
    return "-"


def verification_lines(run: SearchRun) -> None:
    """What measuring a latency model's pick on the target did (nothing without a latency model)."""
    check, best = run.latency_check, run.best
    if check is None:
        return
    if not check.verified:
        _say(f"latency:    NOT verified (--no-verify-latency): best.json's {best.get('latency_predicted_ms', 0):.3f} ms "
             "is the latency model's prediction; measure it on the target before relying on it")
        return
    budget = run.constraints.latency_max_ms
    _say(f"verified:   best.json measured {best['latency_ms']:.3f} ms on {run.constraints.latency_target or run.config.latency_target} "
         f"(predicted {best.get('latency_predicted_ms') or float('nan'):.3f} ms)"
         + (f" <= budget {budget:g} ms" if budget is not None else "")
         + f"; {check.measured} subnet(s) measured, {len(check.rejected)} rejected over the budget"
         + (f", {check.left_front} left the front once measured" if run.pareto is not None else ""))
    for r in check.rejected[:5]:
        _say(f"  rejected: predicted {r['latency_predicted_ms']:.3f} ms, measured {r['latency_ms']:.3f} ms")
    if check.drifted():
        _say(f"  drift:    the target measured {100 * (check.measured_over_predicted - 1):.0f}% slower than the latency "
             "model predicts (median over the measured subnets): refit it on a quiet machine (`taslora latency fit`)")
