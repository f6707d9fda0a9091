"""onnxruntime CPU speed of the int8 (static QDQ) and fp16 twins against the fp32 export, side by side in one run.

Two models, each exported to fp32 ONNX, then converted with taslora_deploy.precision.convert (convert_fp16,
quantize_int8):

(a) fmnist: the shipped TAS-LoRA run (benchmarks/reproduction/tas-lora-s0 with benchmarks/reproduction/subnet.json),
    exported through the library's `export` verb (what `taslora export --onnx --latency-check report` runs);
    int8 calibrated on the first --calib-size images of the run's held-out *validation* split.
(b) autoformer-t at 224x224: a random-weight supernet of the autoformer-t preset, its middle subnet (the median
    choice of every group); int8 calibrated on --synthetic-calib synthetic (random normal) images. Accuracy is
    not the point there, speed is: the weights are random.

Every timing goes through `taslora_deploy.bench.verb.benchmark` (THE timing loop): per artifact and batch size, a
time-based warm-up, then >= --min-iters calls and >= --min-time-s seconds; then, against fp32, interleaved A/B
pairs (AB, BA, ...) whose per-pair ratio median is the "paired" ratio. onnxruntime gets --threads intra-op
threads (default 1: the machine is shared) and the process runs niced when started as below:

    nice -n 10 .venv/bin/python benchmarks/bench_precision.py                 # both models, batch 1 and 32
    nice -n 10 .venv/bin/python benchmarks/bench_precision.py --models fmnist --threads 2

Writes results.json and results.md (plus each model's bench.json and bench.png) to --out (default
benchmarks/results/precision/); the ONNX files go to --work (default benchmarks/reproduction-runs/precision/,
git-ignored).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from taslora_core.atomic import atomic_write_text  # noqa: E402
from taslora_core.run_io import load_checkpoint  # noqa: E402
from taslora_core.space import SearchSpace  # noqa: E402
from taslora_core.subnet import Subnet  # noqa: E402
from taslora_core.supernet import Supernet  # noqa: E402
from taslora_deploy.bench.verb import benchmark  # noqa: E402
from taslora_deploy.onnx_export import export_onnx  # noqa: E402
from taslora_deploy.pipeline import ExportOptions, export  # noqa: E402
from taslora_deploy.precision.convert import convert_fp16, quantize_int8  # noqa: E402
from taslora_deploy.precision.data import calibration_images  # noqa: E402
from taslora_deploy.standalone.model import materialize  # noqa: E402

ROOT = Path(__file__).resolve().parent
SHIPPED_RUN = ROOT / "reproduction" / "tas-lora-s0"
SHIPPED_SUBNET = ROOT / "reproduction" / "subnet.json"


def _fmnist_fp32(folder: Path, threads: int) -> Path:
    """The shipped run's folded export (fp32 ONNX)."""
    opts = ExportOptions(onnx=True, latency_mode="report", latency_iters=50, threads=threads)
    result = export(SHIPPED_SUBNET, SHIPPED_RUN, out=folder / "export", options=opts, log=lambda _: None)
    onnx_path = folder / "export" / "model.onnx"
    if not onnx_path.is_file():
        raise SystemExit(f"the export wrote no {onnx_path}: {result.failures}")
    return onnx_path


def _middle(choices) -> Any:
    ordered = sorted(choices)
    return ordered[(len(ordered) - 1) // 2]


def _autoformer_fp32(folder: Path, seed: int) -> tuple[Path, Subnet]:
    """A random-weight autoformer-t supernet's middle subnet, exported at 224x224."""
    space = SearchSpace.preset("autoformer-t")
    torch.manual_seed(seed)
    supernet = Supernet(space).eval()
    depth = _middle(space.depths)
    heads, ratios = sorted(space.num_heads), sorted(space.mlp_ratios)
    subnet = Subnet(embed_dim=_middle(space.embed_dims), depth=depth,  # alternate the choices: a mid-size mix
                    mlp_ratios=[ratios[i % len(ratios)] for i in range(depth)],
                    num_heads=[heads[i % len(heads)] for i in range(depth)])
    model = materialize(supernet, subnet).eval()
    path = export_onnx(model, folder / "export" / "model.onnx", input_shape=(space.in_chans, space.img_size, space.img_size))
    return path, subnet


def _twins(fp32: Path, calib: torch.Tensor, skip_fp16: bool) -> dict[str, Path]:
    """int8 / fp16 twins of `fp32`, written beside the export folder (not into it: the export's report.json
    records the hashes of the files it wrote, and `bench` checks them)."""
    out = {"fp32": fp32}
    twins = fp32.parent.parent / "twins"
    t0 = time.perf_counter()
    out["int8"] = quantize_int8(fp32, calib, twins / "model_int8.onnx", per_channel=True)
    print(f"  int8 QDQ calibrated on {len(calib)} images in {time.perf_counter() - t0:.1f} s")
    if not skip_fp16:
        out["fp16"] = convert_fp16(fp32, twins / "model_fp16.onnx")
    return out


def _measure(name: str, files: dict[str, Path], folder: Path, args) -> dict[str, Any]:
    print(f"  timing {', '.join(files)} at batch {args.batch_sizes} ({args.threads} intra-op thread(s))")
    result = benchmark([files["fp32"], *(p for k, p in files.items() if k != "fp32")], batch_sizes=args.batch_sizes,
                       threads=args.threads, warmup_s=args.warmup_s, min_iters=args.min_iters,
                       min_time_s=args.min_time_s, compare=str(files["fp32"]), paired_iters=args.paired_iters,
                       out=folder, log=lambda line: print("   ", line))
    by_label = {info.label: key for info in result.artifacts for key, p in files.items() if Path(info.path) == p}
    rows = []
    for r in result.rows:
        vs = r.get("vs_baseline") or {}
        paired = vs.get("paired") or {}
        rows.append({"model": name, "precision": by_label[r["artifact"]], "graph": r["precision"], "batch": r["batch"],
                     "size_mb": r["size_bytes"] / 1e6, "p50_ms": r["p50_ms"], "p10_ms": r["p10_ms"],
                     "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"], "images_per_s": r["throughput_ips"],
                     "ratio_of_medians": vs.get("ratio_of_medians"), "paired_ratio": paired.get("ratio_median"),
                     "paired_p10": paired.get("ratio_p10"), "paired_p90": paired.get("ratio_p90")})
    return {"rows": rows, "bench_json": str(result.json_path), "bench_png": str(result.plot_path),
            "environment": result.environment}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _markdown(models: dict[str, dict], args, env: dict[str, Any], command: str) -> str:
    lines = [
        "| model | precision | graph | batch | size MB | p50 ms (p10-p90) | images/s | latency vs fp32: "
        "ratio of medians | paired ratio (p10-p90) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in models.values():
        for r in sorted(entry["rows"], key=lambda r: (r["batch"], ["fp32", "int8", "fp16"].index(r["precision"]))):
            paired = (f"**{r['paired_ratio']:.3f}** ({r['paired_p10']:.3f}-{r['paired_p90']:.3f})"
                      if r["paired_ratio"] is not None else "-")
            lines.append(f"| {r['model']} | {r['precision']} | {r['graph']} | {r['batch']} | {r['size_mb']:.2f} | "
                         f"{r['p50_ms']:.2f} ({r['p10_ms']:.2f}-{r['p90_ms']:.2f}) | {r['images_per_s']:.0f} | "
                         f"{_fmt(r['ratio_of_medians'], '.3f')} | {paired} |")
    notes = [
        "",
        f"Command: `{command}`",
        f"Machine: {env['cpu_model']} ({env['cpu_count']} logical CPUs, shared with other work), "
        f"{env['platform']}; onnxruntime {env['onnxruntime']}, torch {env['torch']}, onnx {env['onnx']}; "
        f"CPUExecutionProvider with {args.threads} intra-op thread(s), process niced.",
        f"Timing: warm-up {args.warmup_s} s, then >= {args.min_iters} calls and >= {args.min_time_s} s per artifact "
        f"and batch; paired = {args.paired_iters} interleaved fp32/other pairs (alternating order), median of the "
        "per-pair latency ratios. Ratio < 1: faster than fp32.",
    ]
    for entry in models.values():
        notes.append(f"- {entry['model']}: {entry['what']}")
    return "\n".join(lines + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="fmnist,autoformer-t", help="comma-separated: fmnist, autoformer-t")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (pinned)")
    parser.add_argument("--calib-size", type=int, default=512, help="fmnist: validation images for int8 calibration")
    parser.add_argument("--synthetic-calib", type=int, default=256, help="autoformer-t: synthetic calibration images")
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--min-iters", type=int, default=20)
    parser.add_argument("--min-time-s", type=float, default=3.0)
    parser.add_argument("--paired-iters", type=int, default=20)
    parser.add_argument("--no-fp16", action="store_true", help="skip the fp16 twin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "precision")
    parser.add_argument("--work", type=Path, default=ROOT / "reproduction-runs" / "precision",
                        help="where the exports and their fp16/int8 twins are written")
    args = parser.parse_args()
    args.batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    torch.set_num_threads(args.threads)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # errors only: ORT CPU warns about every fp16 Add it cannot fold
    command = " ".join(["nice -n 10 .venv/bin/python benchmarks/bench_precision.py", *sys.argv[1:]])
    models: dict[str, dict] = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        folder = args.work / name
        print(f"{name}:")
        if name == "fmnist":
            fp32 = _fmnist_fp32(folder, args.threads)
            calib = calibration_images(load_checkpoint(SHIPPED_RUN), args.calib_size)
            what = (f"the shipped TAS-LoRA run (tas-lora-s0) at subnet.json, 28x28; int8 calibrated on the first "
                    f"{len(calib)} images of the run's held-out validation split")
        elif name == "autoformer-t":
            fp32, subnet = _autoformer_fp32(folder, args.seed)
            calib = torch.randn((args.synthetic_calib, *_input_shape(fp32)), generator=torch.Generator().manual_seed(args.seed))
            what = (f"random-weight autoformer-t supernet, middle subnet (embed {subnet.embed_dim}, depth {subnet.depth}, "
                    f"mlp ratios {list(subnet.mlp_ratios)}, heads {list(subnet.num_heads)}), 224x224; int8 calibrated on "
                    f"{len(calib)} synthetic images: speed only, the accuracy of random weights means nothing")
        else:
            raise SystemExit(f"unknown model {name!r}: use fmnist or autoformer-t")
        files = _twins(fp32, calib, args.no_fp16)
        models[name] = {"model": name, "what": what, **_measure(name, files, args.out / name, args)}
    env = next(iter(models.values()))["environment"]
    md = _markdown(models, args, env, command)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.json", json.dumps(
        {"command": command, "threads": args.threads, "machine": env["cpu_model"],
         "environment": env, "models": {k: {kk: vv for kk, vv in v.items() if kk != "environment"}
                                        for k, v in models.items()}}, indent=2) + "\n")
    atomic_write_text(args.out / "results.md", md)
    print(md)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")


def _input_shape(path: Path) -> tuple[int, ...]:
    """(C, H, W) of an exported ONNX file's input."""
    from taslora_deploy.onnx_graph import onnx_input_info

    return tuple(int(d) for d in onnx_input_info(path)[1][1:])


if __name__ == "__main__":
    main()
