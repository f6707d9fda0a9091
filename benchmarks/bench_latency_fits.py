"""Latency fits with the product's defaults, several in a row, quiet or beside one CPU-bound process (issue 29).

Each fit is `fit_latency_model` with `FitConfig`'s defaults (what `taslora latency fit --samples 32` runs) on a
fresh random supernet of the space (only shapes matter); the fits share one export folder, so the first one
exports the parts and the others reuse them, as a user's later fits do. `--beside train` starts one CPU-bound
process for the whole run (a one-thread training loop of the fmnist supernet on random images) and stops it at
the end; `--compare-unpaired` alternates each fit with one timed the previous way (each subnet alone,
`--unpaired`), so both rules meet the same machine. "cliffs ordered": held-out pairs where the subnet with fewer
FLOPs is measured slower beyond the noise, and how many of them the model orders right. Writes fits-<space>-<target>-<beside>.json and a Markdown
table beside it under --out.

    python benchmarks/bench_latency_fits.py --space fmnist --fits 5
    python benchmarks/bench_latency_fits.py --space fmnist --fits 5 --beside train
    python benchmarks/bench_latency_fits.py --space autoformer-t --fits 5 --max-rounds 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from taslora_core.atomic import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "latency-fits"
SCRATCH = Path(tempfile.gettempdir()) / "taslora-bench-latency-fits"

BESIDE_TRAIN = """
import torch
from taslora_core.space import SearchSpace
from taslora_core.subnet import largest_subnet
from taslora_core.supernet import Supernet
torch.set_num_threads(1)
torch.manual_seed(0)
space = SearchSpace.preset("fmnist")
model, subnet = Supernet(space), largest_subnet(space)
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
while True:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x, subnet), y).backward()
    opt.step()
"""
"""The CPU-bound process of `--beside train`: one thread of supernet training steps, forever."""
BESIDE_NAME = "one CPU-bound process (--beside train: a one-thread training loop)"


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _row(model: Any, result: Any, paired: bool) -> dict[str, Any]:
    info, fit = model.info, model.info["fit"]
    held, proxy = info["heldout"], info["flops_proxy"]["heldout"]
    return {"paired": paired, "within_10pct": held["within_10pct"], "spearman": held["spearman"], "mape": held["mape"],
            "flops_within_10pct": proxy["within_10pct"], "flops_spearman": proxy["spearman"],
            "noise_p50": fit["noise"]["round_spread_median"], "noise_p90": fit["noise"]["round_spread_p90"],
            "unconfirmed": fit.get("unconfirmed"), "timings": fit["timings"]["timings"],
            "known_share": fit["timings"]["known_share"], "cliffs": info.get("cliffs"),
            "load": fit["load_average"], "wall_s": result.wall_s, "export_s": result.export_s}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The fits of one condition; returns the JSON document written."""
    from taslora_core.space import SearchSpace
    from taslora_core.supernet import Supernet
    from taslora_deploy.fit_latency import FitConfig, fit_latency_model

    torch.manual_seed(0)
    supernet = Supernet(SearchSpace.preset(args.space)).eval()
    scratch = args.scratch / f"{args.space}-{args.target}"
    beside = None
    if args.beside == "train":
        beside = subprocess.Popen([sys.executable, "-c", BESIDE_TRAIN], stdout=subprocess.DEVNULL)
        time.sleep(5)  # let it reach its steady state
        if beside.poll() is not None:
            raise SystemExit(f"the --beside process exited ({beside.returncode}) before the fits; see its error above")
    doc: dict[str, Any] = {"space": args.space, "target": args.target, "beside": args.beside, "note": args.note,
                           "samples": args.samples,
                           "host": os.uname().nodename, "cpus": os.cpu_count(), "torch": torch.__version__,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_before": _load(),
                           "fits": []}
    try:
        for i in range(args.fits):
            for paired in ((True, False) if args.compare_unpaired else (True,)):
                config = FitConfig(target=args.target, samples=args.samples, workdir=scratch / "workdir",
                                   out=scratch / "models" / f"fit{i}-{'paired' if paired else 'unpaired'}",
                                   export_dir=scratch / "exports", paired=paired, max_rounds=args.max_rounds)
                result = fit_latency_model(supernet, config)
                row = _row(result.models[1], result, paired)
                doc["fits"].append(row)
                print(f"fit {i + 1} ({'paired' if paired else 'unpaired'}): {100 * row['within_10pct']:.0f}% within "
                      f"+-10%, Spearman {row['spearman']:.3f}, noise p50/p90 {100 * row['noise_p50']:.1f}% / "
                      f"{100 * row['noise_p90']:.1f}%, {row['wall_s']:.0f} s", flush=True)
        if beside is not None and beside.poll() is not None:
            raise SystemExit(f"the --beside process exited ({beside.returncode}) during the fits: not written")
    finally:
        if beside is not None:
            beside.terminate()
            beside.wait()
    stem = f"fits-{args.space}-{args.target}-{args.beside}"
    atomic_write_json(args.out / f"{stem}.json", doc)
    atomic_write_text(args.out / f"{stem}.md", table(doc))
    return doc


def table(doc: dict[str, Any]) -> str:
    """The Markdown table of one condition's fits."""
    beside = doc.get("note") or {"none": "nothing (quiet)", "train": BESIDE_NAME}[doc["beside"]]
    lines = [f"`{doc['space']}` on {doc['target']}, beside: {beside}, --samples {doc['samples']}, {doc['started']}",
             "",
             "| fit | timing | held-out within +-10% | Spearman | MAPE | FLOPs as proxy (within, Spearman) | "
             "cliffs ordered | round noise p50 / p90 | unconfirmed | load | wall |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(doc["fits"], 1):
        load, cliffs = row["load"] or {}, row.get("cliffs") or {}
        lines.append(
            f"| {i} | {'paired' if row['paired'] else 'alone'} | **{100 * row['within_10pct']:.0f}%** | "
            f"{row['spearman']:.3f} | {100 * row['mape']:.1f}% | {100 * row['flops_within_10pct']:.0f}%, "
            f"{row['flops_spearman']:.3f} | {cliffs.get('ordered_right_by_model', '-')}/{cliffs.get('pairs', '-')} | "
            f"{100 * row['noise_p50']:.1f}% / {100 * row['noise_p90']:.1f}% | "
            f"{row['unconfirmed']} | {load.get('before')} -> {load.get('after')} | {row['wall_s']:.0f} s "
            f"({row['export_s']:.0f} exporting) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="fmnist")
    parser.add_argument("--target", default="ort-cpu")
    parser.add_argument("--samples", type=int, default=32, help="`taslora latency fit --samples` (the issue's 32).")
    parser.add_argument("--fits", type=int, default=5)
    parser.add_argument("--beside", choices=("none", "train"), default="none")
    parser.add_argument("--note", default=None, help="What else ran on the machine (recorded in the table).")
    parser.add_argument("--compare-unpaired", action="store_true", help="Alternate with unpaired fits.")
    parser.add_argument("--max-rounds", type=int, default=None, help="FitConfig.max_rounds (default its own).")
    parser.add_argument("--scratch", type=Path, default=SCRATCH, help="Exports and models (outside the repository).")
    parser.add_argument("--out", type=Path, default=OUT)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
