"""Benchmark of the evolutionary search on Fashion-MNIST.

1. Router + fold cost per candidate as a fraction of that candidate's evaluation, measured side by side in one
   run on the default held-out split (10,000 images): for each candidate, `folded_tensors` (router once + fold
   the routed experts into the sliced weights) is timed, then the whole `evaluate()` over the split (which
   includes its own router + fold). Target: fold <= 2% of the evaluation.
2. Wall time of a search with the given --population/--iterations on the same split, and its extrapolation to
   the paper's default search (population 50, 20 iterations: up to 50 + 20 * 50 = 1050 evaluations). The output
   says which numbers were measured and which are extrapolated.

Without --ckpt a MoLE checkpoint with fresh weights is built in a temporary folder (fine for speed: the cost
does not depend on the weights' values).

    python benchmarks/bench_search.py                                  # fold fraction + a 10 x 2 search
    python benchmarks/bench_search.py --population 50 --iterations 20  # the full default search (hours on CPU)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from taslora_core import complexity
from taslora_core.evaluate import evaluate, folded_tensors
from taslora_core.run_io import load_checkpoint
from taslora_core.search import Constraints, EvolutionSearch, SearchConfig
from taslora_core.search.fitness import CheckpointFitness, load_val_data
from taslora_core.subnet import largest_subnet, sample_subnet, smallest_subnet
from taslora_core.testing import random_mole, save_mole_workspace

DEFAULT_EVALS = 50 + 20 * 50


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def fold_fraction(ckpt, batches, n_candidates: int, fold_reps: int, seed: int) -> list[dict]:
    """Per candidate: median router+fold time, one full evaluation time, and their ratio."""
    import random

    space = ckpt.supernet.space
    rng = random.Random(seed)
    cands = [smallest_subnet(space), largest_subnet(space)] + [sample_subnet(space, rng) for _ in range(max(n_candidates - 2, 0))]
    ckpt.mole.eval()
    folded_tensors(ckpt.supernet, cands[0], ckpt.mole)  # warm-up
    rows = []
    for subnet in cands[:n_candidates]:
        fold_s = []
        for _ in range(fold_reps):
            _sync()
            t = time.perf_counter()
            folded_tensors(ckpt.supernet, subnet, ckpt.mole)
            _sync()
            fold_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        result = evaluate(ckpt.supernet, subnet, batches, mole=ckpt.mole)  # ends with .item(): synchronised
        eval_s = time.perf_counter() - t
        fold = statistics.median(fold_s)
        rows.append({
            "subnet": subnet.to_dict(), "flops_autoformer": complexity.flops(space, subnet),
            "router_fold_s": fold, "evaluate_s": eval_s, "fraction": fold / eval_s, "images": result.count,
        })
        print(f"  depth {subnet.depth} embed {subnet.embed_dim:>3} FLOPs {complexity.format_amount(rows[-1]['flops_autoformer']):>8}:"
              f" router+fold {fold * 1e3:7.2f} ms, evaluate({result.count} images) {eval_s:6.2f} s,"
              f" fraction {100 * fold / eval_s:.3f}%", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, help="MoLE run folder (default: fresh weights in a temp folder)")
    ap.add_argument("--candidates", type=int, default=6, help="candidates for the fold-fraction measurement")
    ap.add_argument("--fold-reps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--population", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--parents", type=int, default=None, help="default: population // 5 (10 for 50)")
    ap.add_argument("--flops", default="auto",
                    help="FLOPs bound of the timed search (autoformer counter); auto = 60%% of the way from the "
                         "space's smallest to its largest subnet")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-fold", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    tmp = None
    ckpt_dir = args.ckpt
    if ckpt_dir is None:
        tmp = tempfile.TemporaryDirectory()
        ckpt_dir = save_mole_workspace(Path(tmp.name), random_mole("fmnist", expert_std=None, router_std=None),
                                       name="bench").mole_dir
    ckpt = load_checkpoint(ckpt_dir, device=args.device)
    t = time.perf_counter()
    val = load_val_data(ckpt, batch_size=args.batch_size, device=args.device)
    prep_s = time.perf_counter() - t
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "device": args.device,
           "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    print(f"checkpoint {ckpt_dir}; {val.total} validation images (pre-materialised in {prep_s:.2f} s); "
          f"batch {args.batch_size}; torch {env['torch']}, {env['threads']} threads, device {args.device}"
          + (f" ({env['gpu']})" if env["gpu"] else ""))
    out: dict = {"env": env, "val_images": val.total, "batch_size": args.batch_size, "prepare_val_s": prep_s}

    if not args.skip_fold:
        print("router + fold vs. evaluation, per candidate (measured side by side):")
        rows = fold_fraction(ckpt, val.batches, args.candidates, args.fold_reps, args.seed)
        fr = [r["fraction"] for r in rows]
        out["fold"] = {"rows": rows, "fraction_median": statistics.median(fr), "fraction_max": max(fr)}
        print(f"router+fold fraction of a candidate's evaluation: median {100 * statistics.median(fr):.3f}%, "
              f"max {100 * max(fr):.3f}% (target <= 2%)")

    if not args.skip_search:
        space = ckpt.supernet.space
        if args.flops == "auto":
            lo, hi = (complexity.flops(space, f(space)) for f in (smallest_subnet, largest_subnet))
            flops_max = lo + 0.6 * (hi - lo)
        else:
            flops_max = complexity.parse_amount(args.flops)
        cons = Constraints(flops_max=flops_max)
        parents = args.parents or max(2, args.population // 5)
        half = args.population // 2
        cfg = SearchConfig(population=args.population, iterations=args.iterations, parents=parents,
                           mutation_num=half, crossover_num=half, seed=args.seed)
        fitness = CheckpointFitness(ckpt, val.batches, "loss")
        t = time.perf_counter()
        result = EvolutionSearch(ckpt.supernet.space, fitness, cons, cfg).run(
            on_generation=lambda i: print(f"  gen {i['generation']}/{i['iterations']}: {i['evaluated']} evaluated,"
                                          f" {time.perf_counter() - t:.1f} s", flush=True))
        wall = time.perf_counter() - t
        n = len(result.history)
        per_eval = wall / n
        measured_default = args.population == 50 and args.iterations == 20
        out["search"] = {
            "population": args.population, "iterations": args.iterations, "parents": parents,
            "flops_max": cons.flops_max, "evaluations": n, "wall_s": wall, "per_eval_s": per_eval,
            "measured_default": measured_default,
            "extrapolated_default_s": None if measured_default else per_eval * DEFAULT_EVALS,
        }
        print(f"MEASURED: search population {args.population}, {args.iterations} iterations, "
              f"FLOPs <= {complexity.format_amount(flops_max)}: "
              f"{n} evaluations of {val.total} images in {wall:.1f} s ({per_eval:.2f} s per evaluation)")
        if not measured_default:
            print(f"EXTRAPOLATED (not measured): default search, up to {DEFAULT_EVALS} evaluations x {per_eval:.2f} s "
                  f"= {per_eval * DEFAULT_EVALS:.0f} s ({per_eval * DEFAULT_EVALS / 3600:.2f} h)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
