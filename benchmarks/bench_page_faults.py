"""Page faults of two models timed alternately in one process, with glibc's malloc as it comes and with
`taslora_core.heap.keep_freed_memory` (what every timing loop of `taslora_deploy.timing` now applies).

Each run is a fresh process (the malloc settings last for the process): the standalone model of a space's largest
subnet and timm's ViT of the same size (benchmarks/bench_vs_timm.py's twin), forward passes alternating for
--pairs pairs after --warmup pairs, on --threads threads, batch --batch; per model the minor page faults per
forward (getrusage) and the median forward time. Runs alternate between the two settings. Writes
<out>/page-faults-<space>-b<batch>.json and .md.

    python benchmarks/bench_page_faults.py --runs 6            # AutoFormer-T, batch 8, one thread
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> None:
    """One run: print a JSON line with faults per forward and median ms per model."""
    import torch

    if args.keep:
        from taslora_core.heap import keep_freed_memory

        assert keep_freed_memory(), "mallopt refused"
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from bench_vs_timm import timm_twin

    from taslora_core.space import SearchSpace
    from taslora_core.subnet import largest_subnet
    from taslora_core.supernet import Supernet
    from taslora_deploy.standalone.model import materialize

    space = SearchSpace.preset(args.space)
    subnet = largest_subnet(space)
    torch.manual_seed(0)
    models = {"ours": materialize(Supernet(space, drop_path_rate=0.0), subnet).eval(),
              "timm": timm_twin(space, subnet).eval()}
    x = torch.randn(args.batch, space.in_chans, space.img_size, space.img_size)
    faults: dict[str, list[int]] = {k: [] for k in models}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for i in range(args.warmup + args.pairs):
            for name in (("timm", "ours") if i % 2 == 0 else ("ours", "timm")):
                f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
                models[name](x)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
                    faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    out = {name: {"faults_per_forward": sum(faults[name]) / len(faults[name]),
                  "median_ms": 1e3 * sorted(times[name])[len(times[name]) // 2]} for name in models}
    print(json.dumps(out), flush=True)


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Page faults, {result['space']} batch {result['batch']}, {result['threads']} thread(s), "
             f"{result['pairs']} alternating pairs per run\n",
             "| run | malloc | ours faults / forward | timm faults / forward | ours ms | timm ms | ours / timm |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for i, run in enumerate(result["runs"]):
        o, t = run["ours"], run["timm"]
        lines.append(f"| {i} | {'kept (keep_freed_memory)' if run['keep'] else 'as it comes'} | "
                     f"{o['faults_per_forward']:.0f} | {t['faults_per_forward']:.0f} | {o['median_ms']:.1f} | "
                     f"{t['median_ms']:.1f} | {o['median_ms'] / t['median_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="autoformer-t")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=6, help="processes, alternating the two settings")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "page-faults")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from taslora_core.atomic import atomic_write_json, atomic_write_text

    runs = []
    for i in range(args.runs):
        keep = i % 2 == 1
        argv = [sys.executable, __file__, "--child", "--space", args.space, "--batch", str(args.batch), "--threads",
                str(args.threads), "--pairs", str(args.pairs), "--warmup", str(args.warmup), *(["--keep"] if keep else [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        line = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
        runs.append({"keep": keep, **json.loads(line)})
        print(f"run {i} ({'kept' if keep else 'as it comes'}): {line}", flush=True)
    result = {"space": args.space, "batch": args.batch, "threads": args.threads, "pairs": args.pairs, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"page-faults-{args.space}-b{args.batch}"
    atomic_write_json(stem.with_suffix(".json"), result)
    atomic_write_text(stem.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
