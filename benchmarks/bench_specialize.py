"""Does `taslora specialize` take the headroom the mixture of experts leaves (issue 27, item 3)?

For one supernet run and one MoLE run on it, on the headroom map's panel of subnets of that regime (searched,
smallest, two random: benchmarks/results/headroom/map.json, which also gives each subnet's headroom, the test
top-1 gain of fine-tuning it alone, and that fine-tune's seconds), and for each seed:

  supernet      the subnet of the supernet alone
  mole          the subnet with its routed mixture of experts folded (the MoLE run)
  from-mole     `specialize` from the routed mixture (--weights, default the experts' factors)
  from-supernet `specialize` from the supernet alone (a fresh LoRA from zero): does MoLE give a better start?

all on the same test images, so every comparison is paired per image (taslora_core.analysis.paired_bootstrap, 95%
intervals; the specialised cells are averaged over the seeds per image first). The table gives each subnet's gain
over the supernet alone and over the MoLE run, its share of the headroom (gain / the map's headroom; the map's
own interval is not propagated), the mixture start against the supernet start, and the wall and CPU seconds of a
specialize run next to the map's headroom fine-tune. The budget defaults to the headroom fine-tune's: 10% of the
supernet's epochs on its training split (the map's recipe), early-stopped on the held-out validation split.

Every cell is appended to <out>/cells.jsonl (per-image results in <out>/arrays/) as soon as it is done and skipped
on a re-run; a killed specialize run is resumed from its checkpoint (runs live in <out>/workspace/specialized/,
named after their cell). The table goes to <out>/specialize.md and the numbers to <out>/specialize.json.

    python benchmarks/bench_specialize.py --supernet benchmarks/reproduction-runs/wide-10k/workspace/supernets/<run> \\
        --mole <the MoLE run on it> --regime wide-10k --out benchmarks/results/specialize/wide-10k
    python benchmarks/bench_specialize.py --supernet benchmarks/reproduction/supernet \\
        --mole benchmarks/reproduction/tas-lora-s0 --regime narrow --out /tmp/spec-smoke \\
        --seeds 0 --steps 20 --eval-every 10 --val-subset 500 --test-images 1000     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taslora_core.analysis import paired_bootstrap
from taslora_core.atomic import atomic_write_json, atomic_write_text
from taslora_core.data import DataConfig, load_test_batches
from taslora_core.evaluate import per_image
from taslora_core.run_data import RecordedData
from taslora_core.run_io import load_checkpoint
from taslora_core.checkpoint import SUPERNET_WEIGHTS
from taslora_core.specialize import SpecializeConfig, checkpoint_hashes, read_specialized, specialize
from taslora_core.subnet import Subnet
from taslora_core.train.run_files import recorded_epochs
from taslora_core.workspace import is_finished, runs

ROOT = Path(__file__).resolve().parent
MAP = ROOT / "results" / "headroom" / "map.json"
STARTS = ("from-mole", "from-supernet")


# ---------------------------------------------------------------------- bookkeeping
class Cells:
    """cells.jsonl (one JSON record per finished cell) + arrays/<key>.npz (per-image correct, uint8)."""

    def __init__(self, out: Path) -> None:
        self.out, self.log = out, out / "cells.jsonl"
        (out / "arrays").mkdir(parents=True, exist_ok=True)

    def find(self, key: str) -> dict[str, Any] | None:
        if not self.log.exists():
            return None
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return next((r for r in rows if r["key"] == key), None)

    def add(self, record: dict[str, Any], correct: np.ndarray) -> dict[str, Any]:
        np.savez_compressed(self.out / "arrays" / f"{record['key']}.npz", correct=correct)
        with self.log.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        return record

    def correct(self, key: str) -> np.ndarray:
        with np.load(self.out / "arrays" / f"{key}.npz") as data:
            return data["correct"].astype(np.float64)


def panel(map_path: Path, regime: str) -> list[dict[str, Any]]:
    """The map's subnets of `regime`: name, subnet, headroom (points, CI) and the headroom fine-tune's seconds."""
    rows = {r["regime"]: r for r in json.loads(map_path.read_text())}
    if regime not in rows:
        raise SystemExit(f"regime '{regime}' is not in {map_path}; one of {', '.join(rows)}")
    return rows[regime]["headroom"]["subnets"]


def _correct(supernet, subnet: Subnet, batches, source) -> np.ndarray:
    correct, _ = per_image(supernet, subnet, batches, mole=source)
    return correct.numpy().astype(np.uint8)


def _specialize_cell(args: argparse.Namespace, key: str, subnet: Subnet, start: str, seed: int) -> Path:
    """The specialize run of a cell: a finished one of that name, a killed one resumed, or a new one."""
    workdir = args.out / "workspace"
    mine = [r.path for r in runs(workdir, "specialized", finished_only=False) if r.name.endswith(f"-{key}")]
    done = [p for p in mine if is_finished("specialized", p)]
    if done:
        return done[-1]
    now = SpecializeConfig(workdir=str(workdir), threads=args.threads, quiet=True)
    if mine and (mine[-1] / "train_state.pt").exists():
        return specialize(now, resume=str(mine[-1]), log=print).run_dir
    source = {"ckpt": str(args.mole)} if start == "from-mole" else {"supernet": str(args.supernet)}
    budget = {"steps": args.steps} if args.steps else {"epochs": args.epochs}
    cfg = SpecializeConfig(
        workdir=str(workdir), subnet=json.dumps(subnet.to_dict()), weights=args.weights, seed=seed, name=key,
        threads=args.threads, quiet=True, **source, **budget,
        **{k: getattr(args, k) for k in ("lr", "eval_every", "val_subset", "patience", "batch_size", "train_subset",
                                         "metric")
           if getattr(args, k) is not None})
    return specialize(cfg, log=print).run_dir


def run_cells(args: argparse.Namespace, cells: Cells) -> None:
    """Every (subnet, method, seed) cell not yet in cells.jsonl."""
    base = load_checkpoint(args.supernet)
    mole = load_checkpoint(args.mole)
    if mole.kind != "mole" or checkpoint_hashes(mole)[SUPERNET_WEIGHTS] != checkpoint_hashes(base)[SUPERNET_WEIGHTS]:
        raise SystemExit(f"--mole {args.mole} must be a MoLE run trained on the supernet {args.supernet}")
    data = RecordedData.of_checkpoint(mole).data
    test = load_test_batches(DataConfig(**data), limit=args.test_images)
    for row in panel(args.map, args.regime):
        subnet = Subnet.from_dict(row["subnet"]).check_in_space(base.supernet.space)
        name = row["name"]
        for method, ckpt in (("supernet", base), ("mole", mole)):
            key = f"{method}-{name}"
            if cells.find(key) is None:
                correct = _correct(ckpt.supernet, subnet, test, ckpt.mole)
                cells.add({"key": key, "subnet": name, "method": method, "top1": float(correct.mean())}, correct)
                print(f"[bench-specialize] {key}: test top-1 {100 * correct.mean():.2f}%", flush=True)
        for seed in args.seeds:
            for start in STARTS:
                key = f"{start}-{name}-s{seed}"
                if cells.find(key) is not None:
                    continue
                t0, c0 = time.perf_counter(), time.process_time()
                run = read_specialized(_specialize_cell(args, key, subnet, start, seed))
                correct = _correct(mole.supernet, subnet, test, run.delta_source())
                d = run.describe()
                cells.add({"key": key, "subnet": name, "method": start, "seed": seed, "top1": float(correct.mean()),
                           "run": str(run.path), "steps_run": d["steps_run"], "best_step": d["best_step"],
                           "budget_steps": d["budget_steps"], "val_top1_gain_points": d["val_top1_gain_points"],
                           "wall_seconds": d["wall_seconds"], "cpu_seconds": d["cpu_seconds"],
                           "cell_seconds": time.perf_counter() - t0, "cell_cpu_seconds": time.process_time() - c0},
                          correct)
                print(f"[bench-specialize] {key}: test top-1 {100 * correct.mean():.2f}% ({d['steps_run']} steps, "
                      f"best {d['best_step']}, {d['wall_seconds']:.0f} s)", flush=True)


# ---------------------------------------------------------------------- report
def _paired(diff: np.ndarray) -> dict[str, Any]:
    d = paired_bootstrap(torch.from_numpy(diff))
    return {"points": 100 * d.mean, "ci": [100 * d.low, 100 * d.high]}


def _ci(entry: dict[str, Any]) -> str:
    return f"{entry['points']:+.2f} [{entry['ci'][0]:+.2f}, {entry['ci'][1]:+.2f}]"


def report(args: argparse.Namespace, cells: Cells) -> dict[str, Any]:
    """Per subnet and pooled: paired gains with 95% intervals, share of the headroom, seconds."""
    rows, pooled = [], {k: [] for k in ("over_supernet", "over_mole", "start", "mole")}
    for row in panel(args.map, args.regime):
        name = row["name"]
        keys = {s: [f"{s}-{name}-s{seed}" for seed in args.seeds] for s in STARTS}
        if not all(cells.find(k) for k in (f"supernet-{name}", f"mole-{name}", *keys["from-mole"], *keys["from-supernet"])):
            continue
        sup, mol = cells.correct(f"supernet-{name}"), cells.correct(f"mole-{name}")
        spec = {s: np.mean([cells.correct(k) for k in keys[s]], axis=0) for s in STARTS}
        recs = {s: [cells.find(k) for k in keys[s]] for s in STARTS}
        diffs = {"over_supernet": spec["from-mole"] - sup, "over_mole": spec["from-mole"] - mol,
                 "start": spec["from-mole"] - spec["from-supernet"], "mole": mol - sup}
        for k, v in diffs.items():
            pooled[k].append(v)
        over = _paired(diffs["over_supernet"])
        rows.append({
            "subnet": name, "definition": row["subnet"], "top1_supernet": 100 * sup.mean(), "top1_mole": 100 * mol.mean(),
            "top1_from_mole": 100 * spec["from-mole"].mean(), "top1_from_supernet": 100 * spec["from-supernet"].mean(),
            "mole_over_supernet": _paired(diffs["mole"]), "over_supernet": over, "over_mole": _paired(diffs["over_mole"]),
            "from_supernet_over_supernet": _paired(spec["from-supernet"] - sup), "start": _paired(diffs["start"]),
            "headroom_points": row["gain_points"], "headroom_ci": row["ci"], "headroom_seconds": row["seconds"],
            "share_of_headroom": over["points"] / row["gain_points"] if row["gain_points"] > 0 else None,
            "seconds": {s: statistics.fmean(r["wall_seconds"] for r in recs[s]) for s in STARTS},
            "cpu_seconds": {s: statistics.fmean(r["cpu_seconds"] for r in recs[s]) for s in STARTS},
            "steps": {s: [r["steps_run"] for r in recs[s]] for s in STARTS},
            "best_steps": {s: [r["best_step"] for r in recs[s]] for s in STARTS},
        })
    total = {k: _paired(np.mean(v, axis=0)) for k, v in pooled.items() if v}
    heads = [r["headroom_points"] for r in rows]
    if rows:
        total["share_of_headroom"] = (statistics.fmean(r["over_supernet"]["points"] for r in rows)
                                      / statistics.fmean(heads)) if statistics.fmean(heads) > 0 else None
    doc = {"supernet": str(args.supernet), "mole": str(args.mole), "regime": args.regime, "seeds": args.seeds,
           "weights": args.weights, "budget": {"steps": args.steps} if args.steps else {"epochs": args.epochs},
           "test_images": args.test_images or "all", "threads": args.threads, "rows": rows, "pooled": total}
    atomic_write_json(args.out / "specialize.json", doc)
    atomic_write_text(args.out / "specialize.md", markdown(doc))
    print(markdown(doc), flush=True)
    return doc


def markdown(doc: dict[str, Any]) -> str:
    """The results table (points of test top-1; paired 95% intervals on the same test images)."""
    budget = ", ".join(f"{k} {v}" for k, v in doc["budget"].items())
    lines = [f"Regime {doc['regime']}: supernet {doc['supernet']}, MoLE {doc['mole']}; specialize --weights "
             f"{doc['weights']}, {budget}, seeds {', '.join(map(str, doc['seeds']))}, {doc['threads']} threads; test "
             f"images: {doc['test_images']}.", "",
             "| subnet | supernet | MoLE (gain) | specialized from the mixture | gain over supernet | gain over MoLE | "
             "share of headroom (headroom) | from supernet alone: gain | mixture vs supernet start | seconds: "
             "specialize from mixture / from supernet / headroom fine-tune (CPU s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        share = f"{100 * r['share_of_headroom']:.0f}%" if r["share_of_headroom"] is not None else "–"
        lines.append(
            f"| {r['subnet']} | {r['top1_supernet']:.2f} | {r['top1_mole']:.2f} ({_ci(r['mole_over_supernet'])}) | "
            f"{r['top1_from_mole']:.2f} | **{_ci(r['over_supernet'])}** | {_ci(r['over_mole'])} | {share} "
            f"({r['headroom_points']:+.2f}) | {_ci(r['from_supernet_over_supernet'])} | {_ci(r['start'])} | "
            f"{r['seconds']['from-mole']:.0f} / {r['seconds']['from-supernet']:.0f} / {r['headroom_seconds']:.0f} "
            f"({r['cpu_seconds']['from-mole']:.0f}) |")
    p = doc["pooled"]
    if p:
        share = f"{100 * p['share_of_headroom']:.0f}%" if p.get("share_of_headroom") is not None else "–"
        lines.append(f"| pooled | | {_ci(p['mole'])} | | **{_ci(p['over_supernet'])}** | {_ci(p['over_mole'])} | "
                     f"{share} | | {_ci(p['start'])} | |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supernet", type=Path, required=True, help="The supernet run folder.")
    parser.add_argument("--mole", type=Path, required=True, help="The MoLE run trained on it.")
    parser.add_argument("--regime", default="wide-10k", help="The map's regime whose panel of subnets to use.")
    parser.add_argument("--map", type=Path, default=MAP, help="The headroom map (map.json).")
    parser.add_argument("--out", type=Path, required=True, help="Results folder (cells, arrays, workspace, table).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights", default="lora", help="What specialize trains (lora, linear, single-lora).")
    parser.add_argument("--steps", type=int, default=None, help="Budget in steps (default: --epochs).")
    parser.add_argument("--epochs", type=int, default=None,
                        help="Budget in epochs (default: 10%% of the supernet's epochs, the headroom fine-tune's).")
    parser.add_argument("--lr", type=float, default=None, help="specialize --lr (default: its own).")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--val-subset", type=int, default=None)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--metric", default=None, help="specialize --metric (loss or top1; default: its own).")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--test-images", type=int, default=None, help="Only the first N test images (smoke runs).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="Only the table, from the cells done so far.")
    args = parser.parse_args(argv)
    if args.steps is None and args.epochs is None:
        args.epochs = max(1, round(recorded_epochs(args.supernet) / 10))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cells = Cells(args.out)
    if not args.report_only:
        run_cells(args, cells)
    report(args, cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
