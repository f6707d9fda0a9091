"""Benchmark of the fitted latency models (`taslora latency fit`) and of the model-driven search (issue 19).

Stages (each writes JSON under --out, default benchmarks/results/latency-model/; `report` turns them into Markdown):

    export    export the ONNX files of the measurement pool ahead (slow, needs no quiet machine)
    pool      `fit_latency_model` on the pool (the design's first --design subnets + --heldout random ones) at each
              batch size: the product's own measuring and fitting (timed in shuffled rounds, noise recorded)
    curve     held-out accuracy vs samples used (16, 32, 64, 128: prefixes of the design, as `--samples N` would
              measure), for the chosen form, the features form, the lookup form and FLOPs as the proxy; writes the
              64-sample model each search uses
    search    at 5 latency budgets (quantiles of the pool's latencies): the model-driven search (screen by the
              64-sample model, verify on the target) vs measuring every candidate, same search settings; fitness
              from the shipped MoLE run (benchmarks/reproduction/tas-lora-s0) on a validation subset
    report    the Markdown tables (docs/results.md quotes them)

`pool` and `search` time things: run them alone on the machine (pause other jobs), the others need no quiet.

    python benchmarks/bench_latency_model.py export --target ort-cpu
    python benchmarks/bench_latency_model.py pool --target ort-cpu --batches 1,32 --statistic min
    python benchmarks/bench_latency_model.py curve
    python benchmarks/bench_latency_model.py search --target ort-cpu --batch 1 \
        --onnx-dir /tmp/taslora-bench-latency/onnx-search   # an empty folder: the searches pay their own exports
    python benchmarks/bench_latency_model.py report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from taslora_core.atomic import atomic_write_json
from taslora_core.search.latency_design import design_subnets, heldout_subnets
from taslora_core.space import SearchSpace
from taslora_core.supernet import Supernet

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "latency-model"
CKPT = ROOT / "reproduction" / "tas-lora-s0"
SCRATCH = Path(tempfile.gettempdir()) / "taslora-bench-latency"
"""ONNX exports of the pool (~1.5 MB each) and the latency caches: outside the repository."""
SAMPLES = (16, 32, 64, 128)
QUANTILES = (0.15, 0.3, 0.5, 0.7, 0.85)
"""The 5 latency budgets of the searches: these quantiles of the pool's measured latencies."""


def load() -> list[float]:
    """The 1/5/15-minute load averages."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def conditions() -> dict[str, Any]:
    """Machine and load of a run."""
    return {"host": platform.node(), "cpus": os.cpu_count(), "cpu": _cpu_name(), "torch": torch.__version__,
            "load_before": load(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _supernet(space: str, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    return Supernet(SearchSpace.preset(space)).eval()


def _say(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------------- export / pool
def stage_export(args: argparse.Namespace) -> None:
    from taslora_deploy.latency_lookup import LatencyTable

    from taslora_core.subnet import Subnet

    supernet = _supernet(args.space)
    design = design_subnets(supernet.space, args.design, args.seed)
    pool = [*design, *heldout_subnets(supernet.space, args.heldout, design, args.seed)]
    if args.subnets is not None:  # the candidates a `plan` says the measure-every-candidate searches will time
        pool = [Subnet.from_dict(d) for d in json.loads(args.subnets.read_text())["subnets"]]
    pool = pool[::-1] if args.reverse else pool  # a second worker from the other end
    table = LatencyTable(supernet, args.target, export_dir=args.onnx_dir)
    start = time.perf_counter()
    done = table.export_ahead(pool, lambda _s, i, n: _say(f"exported {i}/{n}") if i % 10 == 0 or i == n else None)
    _say(f"{done} new exports of {len(pool)} in {time.perf_counter() - start:.0f} s "
         f"({table.export_s / max(done, 1):.1f} s per export)")


def stage_pool(args: argparse.Namespace) -> None:
    from taslora_deploy.fit_latency import FitConfig, fit_latency_model

    supernet = _supernet(args.space)
    out = args.out / args.target / args.statistic
    cond = conditions()
    config = FitConfig(target=args.target, batches=[int(b) for b in args.batches.split(",")], samples=args.design,
                       holdout=args.heldout, seed=args.seed, rounds=args.rounds, statistic=args.statistic,
                       max_time_s=args.max_time, workdir=SCRATCH / "workdir", out=out if "," in args.batches else out / f"b{args.batches}",
                       export_dir=args.onnx_dir)
    result = fit_latency_model(supernet, config, _say)
    cond.update(load_after=load(), wall_s=result.wall_s, export_s=result.export_s, measured=result.measured,
                models={str(b): str(p) for b, p in result.paths.items()})
    atomic_write_json(args.out / f"pool-{args.target}-{args.statistic}.json", cond)


# ------------------------------------------------------------------------------------------------- curve
def _pool_model(out: Path, target: str, statistic: str, batch: int):
    from taslora_core.search.latency_model import read_latency_model

    return read_latency_model(out / target / statistic / f"b{batch}")


def _measured(model) -> tuple[list, list, dict[str, float], dict[str, list[float]]]:
    """(design subnets in design order, held-out subnets, {key: ms}, {key: rounds}) of a pool model's file."""
    from taslora_core.subnet import Subnet
    from taslora_deploy.latency_lookup import LatencyTable

    design, held, values, rounds = [], [], {}, {}
    for m in model.info["measurements"]:
        subnet = Subnet.from_dict(m["subnet"])
        (design if m["role"] == "fit" else held).append(subnet)
        values[LatencyTable.key(subnet)] = m["latency_ms"]
        rounds[LatencyTable.key(subnet)] = m["rounds_ms"]
    return design, held, values, rounds


def stage_curve(args: argparse.Namespace) -> None:
    """Held-out accuracy vs samples for every pool model found; writes curve.json and the 64-sample models."""
    from taslora_core.search.latency_model import write_latency_model
    from taslora_deploy.fit_latency import FitConfig, build_model

    rows = []
    for path in sorted(args.out.glob("*/*/b*/latency-model.json")):
        target, statistic, batch = path.parent.parent.parent.name, path.parent.parent.name, int(path.parent.name[1:])
        pool = _pool_model(args.out, target, statistic, batch)
        design, held, values, rounds = _measured(pool)
        for n in SAMPLES:
            if n > len(design):
                continue
            sub = design[:n]
            config = FitConfig(target=target, samples=n, holdout=len(held), rounds=pool.info["fit"]["rounds"],
                               statistic=statistic)
            model = build_model(pool.space, config, batch, sub, held, values, rounds)
            forms = {"chosen": model.heldout, **{k: v["heldout"] for k, v in model.info["forms"].items() if k != "chosen"},
                     "flops": model.info["flops_proxy"]["heldout"]}
            rows.append({"target": target, "statistic": statistic, "batch": batch, "samples": n, "heldout": len(held),
                         "chosen_form": model.terms.form, "ridge": model.terms.ridge, "forms": forms,
                         "cliffs": model.info["cliffs"], "noise": model.info["fit"]["noise"],
                         "pool_load": json.loads((args.out / f"pool-{target}-{statistic}.json").read_text()).get("load_before")})
            if n == args.search_samples:
                model.host, model.runtime = pool.host, pool.runtime
                write_latency_model(args.out / "search-models" / target / statistic / f"b{batch}", model)
            print(f"{target} {statistic} b{batch} n={n:>3}: chosen {model.terms.form:<15} MAPE {100 * forms['chosen']['mape']:5.1f}% "
                  f"within10 {100 * forms['chosen']['within_10pct']:5.1f}% rho {forms['chosen']['spearman']:.3f} | "
                  f"features {100 * forms['features']['mape']:5.1f}% lookup {100 * forms['lookup']['mape']:5.1f}% "
                  f"FLOPs {100 * forms['flops']['mape']:5.1f}% rho {forms['flops']['spearman']:.3f}", flush=True)
    atomic_write_json(args.out / "curve.json", rows)


# ------------------------------------------------------------------------------------------------- searches
def _factory(onnx_dir: Path, made: list):
    """Latency lookups as `taslora search` makes them, but with an in-memory cache (each search measures from
    scratch: the count is what the search needs) and the pool's ONNX exports reused (recorded)."""
    from taslora_deploy.latency_lookup import latency_factory

    make = latency_factory(None, export_dir=onnx_dir)

    def tracked(supernet, spec):
        made.append(make(supernet, spec))
        return made[-1]

    return tracked


def _search_config(args, budget: float, model: Path | None):
    """The one set of search settings both methods use (only the latency model differs)."""
    from taslora_core.search import Constraints, SearchConfig, SearchRunConfig
    from taslora_core.search.latency_setup import LatencyOptions

    return SearchRunConfig(
        budget=Constraints.from_amounts(latency_budget=budget, target=args.target, latency_batch=args.batch),
        search=SearchConfig(population=args.population, iterations=args.iterations, parents=args.parents,
                            val_subset=args.val_subset, batch_size=250, seed=args.seed),
        ckpt=args.ckpt, workdir=SCRATCH / "searches-ws",
        latency=LatencyOptions(model=model, batch=args.batch, statistic=args.statistic))


def _budgets(args) -> tuple[list[float], Path]:
    """5 budgets at quantiles of the pool's measured latencies, and the search model's path."""
    import numpy as np

    pool = _pool_model(args.out, args.target, args.statistic, args.batch)
    model_path = args.out / "search-models" / args.target / args.statistic / f"b{args.batch}" / "latency-model.json"
    ms = sorted(m["latency_ms"] for m in pool.info["measurements"])
    return [round(float(np.quantile(ms, q)), 4) for q in QUANTILES], model_path


def stage_plan(args: argparse.Namespace) -> None:
    """Dry run of the measure-every-candidate searches with the search model standing in for the measurement:
    the subnets they will ask about, so their ONNX files can be exported ahead (`export --subnets`)."""
    from taslora_core.search import run_search
    from taslora_core.search.latency_model import read_latency_model

    budgets, model_path = _budgets(args)
    model, asked = read_latency_model(model_path), {}

    class Standin:
        def __init__(self, spec) -> None:
            self.target, self.batch, self.cache_path, self.table, self.measured = spec.target, spec.batch, None, {}, 0

        def __call__(self, subnet):
            asked[subnet.key()] = subnet.to_dict()
            return model.predict(subnet)

        def save(self) -> None:
            pass

    for budget in budgets:
        run_search(_search_config(args, budget, None), latency_factory=lambda supernet, spec: Standin(spec))
        print(f"budget {budget}: {len(asked)} distinct subnets so far", flush=True)
    path = args.out / f"plan-{args.target}-b{args.batch}.json"
    atomic_write_json(path, {"subnets": list(asked.values())})
    print(path)


def _one_search(args, budget: float, model: Path | None, val) -> dict[str, Any]:
    from taslora_core.search import run_search

    made: list = []
    exports_before = len(list(args.onnx_dir.glob("*.onnx")))
    config = _search_config(args, budget, model)
    start = time.perf_counter()
    run = run_search(config, latency_factory=_factory(args.onnx_dir, made))
    wall = time.perf_counter() - start
    lookup = made[0]
    best = run.best
    check = run.latency_check.to_dict() if run.latency_check is not None else None
    return {"method": "model" if model else "measure-all", "budget_ms": budget, "wall_s": wall,
            "measurements": lookup.measured, "export_s": lookup.export_s,
            "new_exports": len(list(args.onnx_dir.glob("*.onnx"))) - exports_before,
            "evaluations": len(run.result.history), "rejected": check["rejected"] if check else 0,
            "best": {"subnet": best["subnet"], "fitness": best["fitness"], "top1": best.get("top1"),
                     "latency_ms": best.get("latency_ms"), "latency_predicted_ms": best.get("latency_predicted_ms")},
            "violation": best.get("latency_ms") is None or best["latency_ms"] > budget,
            "run": str(run.run_dir), "load_after": load()}


def _full_val(args):
    """The checkpoint and its whole held-out validation split (to compare the two methods' picks)."""
    from taslora_core.run_io import load_checkpoint
    from taslora_core.search.fitness import load_val_data

    ckpt = load_checkpoint(args.ckpt)
    return ckpt, load_val_data(ckpt, batch_size=500)


def _compare(ckpt, val, a: dict, b: dict) -> dict[str, Any]:
    """top-1 and loss of both picks on the whole validation split, and the paired top-1 difference (b - a)."""
    from taslora_core.analysis import paired_bootstrap
    from taslora_core.evaluate import per_image
    from taslora_core.subnet import Subnet

    out: dict[str, Any] = {"same_subnet": a["subnet"] == b["subnet"]}
    res = {}
    for name, pick in (("model", a), ("measure-all", b)):
        correct, losses = per_image(ckpt.supernet, Subnet.from_dict(pick["subnet"]), val.batches, ckpt.mole)
        res[name] = (correct.double(), losses.double())
        out[name] = {"top1": float(correct.double().mean()), "loss": float(losses.mean())}
    diff = paired_bootstrap(res["model"][0] - res["measure-all"][0])
    out["top1_diff_model_minus_all"] = diff.to_dict()
    out["within_noise"] = not diff.excludes_zero()
    return out


def stage_search(args: argparse.Namespace) -> None:
    budgets, model_path = _budgets(args)
    ckpt, val = _full_val(args)
    rows, cond = [], conditions()
    for budget in budgets:
        pair = {}
        for method, model in (("model", model_path), ("measure-all", None)):
            pair[method] = _one_search(args, budget, model, val)
            r = pair[method]
            print(f"{args.target} b{args.batch} budget {budget:.3f} ms {method:<11}: {r['measurements']:>3} measured, "
                  f"{r['rejected']} rejected, {r['wall_s']:6.1f} s, best {r['best']['latency_ms']:.3f} ms measured "
                  f"(fitness {r['best']['fitness']:.4f})", flush=True)
        rows.append({**pair, "compare": _compare(ckpt, val, pair["model"]["best"], pair["measure-all"]["best"])})
    cond.update(load_after=load(), target=args.target, batch=args.batch, statistic=args.statistic,
                population=args.population,
                iterations=args.iterations, val_subset=args.val_subset, model=str(model_path), budgets=budgets)
    atomic_write_json(args.out / f"search-{args.target}-{args.statistic}-b{args.batch}.json",
                      {"conditions": cond, "rows": rows})


# ------------------------------------------------------------------------------------------------- report
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _rho(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def stage_report(args: argparse.Namespace) -> None:
    """Markdown tables of curve.json and search-*.json (printed and written to report.md)."""
    lines = ["## Held-out accuracy vs samples (model form chosen by leave-one-out CV; FLOPs = linear fit on FLOPs)", "",
             "| target | statistic | batch | samples | chosen form | MAPE | within +-10% | Spearman | features MAPE / rho | "
             "lookup MAPE / rho | FLOPs MAPE / rho | cliffs ordered right | noise p50 / p90 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in json.loads((args.out / "curve.json").read_text()):
        f = r["forms"]
        lines.append(
            f"| {r['target']} | {r['statistic']} | {r['batch']} | {r['samples']} | {r['chosen_form']} | {_pct(f['chosen']['mape'])} | "
            f"{_pct(f['chosen']['within_10pct'])} | {_rho(f['chosen']['spearman'])} | "
            f"{_pct(f['features']['mape'])} / {_rho(f['features']['spearman'])} | "
            f"{_pct(f['lookup']['mape'])} / {_rho(f['lookup']['spearman'])} | "
            f"{_pct(f['flops']['mape'])} / {_rho(f['flops']['spearman'])} | "
            f"{r['cliffs'].get('ordered_right_by_model', 0)}/{r['cliffs'].get('pairs', 0)} | "
            f"{_pct(r['noise']['round_spread_median'])} / {_pct(r['noise']['round_spread_p90'])} |")
    lines += ["", "## Searches: model-driven (screen by the 64-sample model, verify on the target) vs measure every candidate",
              "", "| target | statistic | batch | budget ms | method | measurements | rejected | wall s | exports (s) | result ms "
              "(measured) | violation | val fitness | top-1 (full val) | same pick / paired top-1 diff (95% CI) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(args.out.glob("search-*.json")):
        doc = json.loads(path.read_text())
        c = doc["conditions"]
        for row in doc["rows"]:
            cmp_ = row["compare"]
            for method in ("model", "measure-all"):
                m = row[method]
                diff = cmp_["top1_diff_model_minus_all"]
                verdict = ("same subnet" if cmp_["same_subnet"] else
                           f"{100 * diff['mean']:+.2f} pt [{100 * diff['ci95'][0]:+.2f}, {100 * diff['ci95'][1]:+.2f}]")
                lines.append(
                    f"| {c['target']} | {c['statistic']} | {c['batch']} | {m['budget_ms']:.3f} | {method} | {m['measurements']} | "
                    f"{m['rejected']} | {m['wall_s']:.0f} | {m['new_exports']} ({m['export_s']:.0f}) | "
                    f"{m['best']['latency_ms']:.3f} | {'YES' if m['violation'] else 'no'} | {m['best']['fitness']:.4f} | "
                    f"{100 * cmp_[method]['top1']:.2f}% | {verdict if method == 'model' else ''} |")
    text = "\n".join(lines) + "\n"
    (args.out / "report.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    for name in ("export", "pool"):
        p = sub.add_parser(name)
        p.add_argument("--target", default="ort-cpu")
        p.add_argument("--space", default="fmnist")
        p.add_argument("--design", type=int, default=max(SAMPLES))
        p.add_argument("--heldout", type=int, default=48)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--onnx-dir", type=Path, default=SCRATCH / "onnx")
        p.add_argument("--out", type=Path, default=OUT)
        if name == "export":
            p.add_argument("--reverse", action="store_true", help="export the pool from its end (a second worker)")
            p.add_argument("--subnets", type=Path, help="export these (a plan-*.json) instead of the pool")
        if name == "pool":
            p.add_argument("--batches", default="1,32")
            p.add_argument("--rounds", type=int, default=3)
            p.add_argument("--statistic", default="median")  # the product's default (`taslora latency fit`)
            p.add_argument("--max-time", type=float, default=0.25, help="most seconds per timing (FitConfig)")
    p = sub.add_parser("curve")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--search-samples", type=int, default=64)
    for name in ("plan", "search"):
        p = sub.add_parser(name)
        p.add_argument("--target", default="ort-cpu")
        p.add_argument("--batch", type=int, default=1)
        p.add_argument("--ckpt", type=Path, default=CKPT)
        p.add_argument("--population", type=int, default=6)
        p.add_argument("--iterations", type=int, default=2)
        p.add_argument("--parents", type=int, default=3)
        p.add_argument("--val-subset", type=int, default=500)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--search-samples", type=int, default=64)
        p.add_argument("--statistic", default="median")
        p.add_argument("--onnx-dir", type=Path, default=SCRATCH / "onnx")
        p.add_argument("--out", type=Path, default=OUT)
    p = sub.add_parser("report")
    p.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    stages = {"export": stage_export, "pool": stage_pool, "curve": stage_curve, "plan": stage_plan,
              "search": stage_search, "report": stage_report}
    stages[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
