"""Our ViT against timm's VisionTransformer of the same size: ratio ours / timm per path, timed pairwise.

    .venv/bin/python benchmarks/bench_vs_timm.py                                # T, S, fmnist; CPU, 2 threads
    .venv/bin/python benchmarks/bench_vs_timm.py --space autoformer-t --attention reference   # the former attention
    .venv/bin/python benchmarks/bench_vs_timm.py --device cuda --space autoformer-t          # torch-cuda rows

For each space the subnet is the largest of its search space (autoformer-t: embed 240, depth 14, 4 heads, MLP
ratio 4, 224x224). timm's model is `timm.models.vision_transformer.VisionTransformer` with the same image and
patch size, input channels, classes, embed dim, depth, heads and MLP ratio, mean pooling over the patch tokens
and a cls token, built with random weights (nothing is downloaded). Rows (ours / timm):

- eager: torch inference of the standalone model (`materialize`), batch 1 and 8;
- train: one training step, forward + cross-entropy + backward (no optimiser step), batch 8, of the supernet
  sliced to the subnet, of the supernet with MoLE deltas (router + merged experts: `MoLEModel`, experts and router
  trained, supernet frozen), of the standalone model, and of the standalone model with run-time LoRA branches
  (`UnmergedMoLEViT`, branches trained); timm's step is its plain forward + backward; drop-path 0 on both sides;
- ort: onnxruntime CPU (on --device cpu), both models exported by `taslora_deploy.onnx_export.export_onnx` (the
  exports go to --work), batch 1 and 8; sessions without busy-waiting threads.

Every row is `taslora_deploy.timing.interleaved_latency` (THE timing loop): a warm-up, then pairs whose order
alternates (timm, ours / ours, timm), as many as fill --row-s seconds within [--iters, --max-iters]; the ratio is
the median of the per-pair ratios, p10-p90 beside it.
torch and onnxruntime get --threads intra-op threads. `--attention reference` swaps in the attention the library
used before (tests/test_attention_fast.py::reference_attention: (N, N, head_dim) tables), for before/after
tables from one source; `--attention none` leaves the relative positions
out (the same models, plain fused attention): what the rest of the model costs against timm's. `--before <json>`
(repeatable) puts an earlier run's ratios beside this run's. CUDA rows synchronise
the device in every call; without CUDA, `--device cuda` writes nothing and says so. Writes
<out>/<attention>-<device>.json and .md (default benchmarks/results/vs-timm/).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import timm as timm_package  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from taslora_core import rel_pos_attention  # noqa: E402
from taslora_core.atomic import atomic_write_text  # noqa: E402
from taslora_core.heap import keep_freed_memory  # noqa: E402
from taslora_core.mole import MoLEConfig, MoLEModel  # noqa: E402
from taslora_core.space import SearchSpace  # noqa: E402
from taslora_core.subnet import Subnet, largest_subnet  # noqa: E402
from taslora_core.supernet import Supernet  # noqa: E402
from taslora_deploy.fold import UnmergedMoLEViT  # noqa: E402
from taslora_deploy.machine import environment  # noqa: E402
from taslora_deploy.onnx_export import export_onnx  # noqa: E402
from taslora_deploy.standalone.model import materialize  # noqa: E402
from taslora_deploy.timing import interleaved_latency, synchronize, torch_threads  # noqa: E402

ROOT = Path(__file__).resolve().parent
SPACES = ("autoformer-t", "autoformer-s", "fmnist")
TRAIN_BATCH = 8


def reference_attention() -> Callable:
    """`reference_attention` of tests/test_attention_fast.py: the attention before issue 28."""
    path = ROOT.parent / "tests" / "test_attention_fast.py"
    spec = importlib.util.spec_from_file_location("test_attention_fast", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.reference_attention


def timm_twin(space: SearchSpace, subnet: Subnet) -> VisionTransformer:
    """timm's ViT with the subnet's sizes (random weights, no download)."""
    return VisionTransformer(
        img_size=space.img_size, patch_size=space.patch_size, in_chans=space.in_chans,
        num_classes=space.num_classes, embed_dim=subnet.embed_dim, depth=subnet.depth,
        num_heads=subnet.num_heads[0], mlp_ratio=subnet.mlp_ratios[0], global_pool="avg", class_token=True,
    )


def _step(model: torch.nn.Module, forward: Callable[[], torch.Tensor], labels: torch.Tensor,
          device: torch.device) -> Callable[[], None]:
    """Forward + cross-entropy + backward, gradients cleared first; synchronised on CUDA."""

    def run() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(forward(), labels).backward()
        synchronize(device)

    return run


def _inference(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(x)
        synchronize(device)

    return run


def _pairs(timm_run: Callable, ours_run: Callable, args) -> int:
    """Pairs for one row: enough for about --row-s seconds, at least --iters, at most --max-iters."""
    timm_run(), ours_run()  # first calls: lazy initialisation
    start = time.perf_counter()
    timm_run(), ours_run()
    pair_s = time.perf_counter() - start
    return int(min(args.max_iters, max(args.iters, args.row_s / max(pair_s, 1e-6))))


def _row(path: str, batch: int, what: str, timm_run: Callable, ours_run: Callable, args) -> dict[str, Any]:
    stats = interleaved_latency(timm_run, ours_run, warmup_s=args.warmup_s, iters=_pairs(timm_run, ours_run, args))
    row = {"path": path, "batch": batch, "what": what, "timm_ms": stats["median_a_ms"],
           "ours_ms": stats["median_b_ms"], "ratio": stats["ratio_median"], "ratio_p10": stats["ratio_p10"],
           "ratio_p90": stats["ratio_p90"], "pairs": stats["iters"]}
    print(f"  {path:<30} batch {batch}: timm {row['timm_ms']:8.2f} ms  ours {row['ours_ms']:8.2f} ms  "
          f"ratio {row['ratio']:.3f} ({row['ratio_p10']:.3f}-{row['ratio_p90']:.3f})", flush=True)
    return row


def bench_space(name: str, args, device: torch.device) -> dict[str, Any]:
    """All rows of one space."""
    space = SearchSpace.preset(name)
    subnet = largest_subnet(space)
    torch.manual_seed(args.seed)
    supernet = Supernet(space, drop_path_rate=0.0).to(device)
    timm = timm_twin(space, subnet).to(device)
    standalone = materialize(supernet, subnet)
    shape = (space.in_chans, space.img_size, space.img_size)
    gen = torch.Generator().manual_seed(args.seed)
    images = {b: torch.randn((b, *shape), generator=gen).to(device) for b in (1, TRAIN_BATCH)}
    labels = torch.randint(0, space.num_classes, (TRAIN_BATCH,), generator=gen).to(device)
    sizes = {"timm_params": sum(p.numel() for p in timm.parameters()),
             "ours_params": sum(p.numel() for p in standalone.parameters())}
    print(f"{name}: embed {subnet.embed_dim}, depth {subnet.depth}, heads {subnet.num_heads[0]}, "
          f"MLP ratio {subnet.mlp_ratios[0]}, {space.img_size}x{space.img_size}; params ours {sizes['ours_params']:,}"
          f" timm {sizes['timm_params']:,}", flush=True)
    rows = []
    timm.eval()
    standalone.eval()
    for b in (1, TRAIN_BATCH):
        rows.append(_row("eager inference, standalone", b, "torch", _inference(timm, images[b], device),
                         _inference(standalone, images[b], device), args))

    x = images[TRAIN_BATCH]
    timm.train()
    timm_step = _step(timm, lambda: timm(x), labels, device)
    supernet.train()
    rows.append(_row("train step, supernet sliced", TRAIN_BATCH, "fwd+bwd", timm_step,
                     _step(supernet, lambda: supernet(x, subnet), labels, device), args))
    mole = MoLEModel(supernet, MoLEConfig()).to(device).train()
    rows.append(_row("train step, supernet + MoLE", TRAIN_BATCH, "fwd+bwd", timm_step,
                     _step(mole, lambda: mole(x, subnet), labels, device), args))
    standalone.train()
    rows.append(_row("train step, standalone", TRAIN_BATCH, "fwd+bwd", timm_step,
                     _step(standalone, lambda: standalone(x), labels, device), args))
    lora = UnmergedMoLEViT(supernet, subnet, mole).train()
    for module in lora.modules():
        if hasattr(module, "U"):
            module.U.requires_grad_(True), module.D.requires_grad_(True)
    rows.append(_row("train step, standalone + LoRA", TRAIN_BATCH, "fwd+bwd", timm_step,
                     _step(lora, lambda: lora(x), labels, device), args))

    if device.type == "cpu" and not args.no_onnx:
        rows += _ort_rows(name, timm.eval(), standalone.eval(), shape, images, args)
    return {"space": name, "subnet": subnet.to_dict(), **sizes, "rows": rows}


def _ort_rows(name: str, timm: torch.nn.Module, ours: torch.nn.Module, shape: tuple[int, ...],
              images: dict[int, torch.Tensor], args) -> list[dict[str, Any]]:
    from taslora_deploy.ort_parity import ort_session

    folder = args.work / f"{name}-{args.attention}"
    files = {}
    for label, model in (("timm", timm), ("ours", ours)):
        files[label] = folder / f"{label}.onnx"
        if not files[label].exists() or args.re_export:
            print(f"  exporting {label} to {files[label]}", flush=True)
            export_onnx(model, files[label], input_shape=shape)
    # no busy-waiting worker threads: on a shared machine they would time the neighbours' load
    sessions = {label: ort_session(path, threads=args.threads, allow_spinning=False)
                for label, path in files.items()}
    rows = []
    for b in (1, TRAIN_BATCH):
        feed = {"images": images[b].cpu().numpy().astype(np.float32)}
        runs = {label: (lambda s=s: s.run(None, feed)) for label, s in sessions.items()}
        rows.append(_row("onnxruntime CPU", b, "same exporter", runs["timm"], runs["ours"], args))
    return rows


def markdown(result: dict[str, Any], befores: list[tuple[str, dict[str, Any]]] | None = None) -> str:
    """The ratio table and the conditions of one run; with `befores` ((label, an earlier result of this script),
    e.g. the reference attention) their ratios side by side, one column each."""
    befores = befores or []
    olds = [{(e["space"], r["path"], r["batch"]): r for e in before["spaces"] for r in e["rows"]} for _, before in befores]
    extra = "".join(f" before ({label}): ours / timm |" for label, _ in befores)
    lines = [f"| space | path | batch | timm ms | ours ms | ours / timm (p10-p90) | pairs |{extra}",
             "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(befores)]
    for entry in result["spaces"]:
        for r in entry["rows"]:
            cells = ""
            for old in olds:
                was = old.get((entry["space"], r["path"], r["batch"]))
                cells += f" {was['ratio']:.3f} ({was['ratio_p10']:.3f}-{was['ratio_p90']:.3f}) |" if was else " - |"
            lines.append(f"| {entry['space']} | {r['path']} | {r['batch']} | {r['timm_ms']:.2f} | {r['ours_ms']:.2f} | "
                         f"**{r['ratio']:.3f}** ({r['ratio_p10']:.3f}-{r['ratio_p90']:.3f}) | {r['pairs']} |{cells}")
    env, cond = result["environment"], result["conditions"]
    lines += [
        "",
        f"Command: `{result['command']}`",
        f"Attention: {result['attention']}. Device: {env['device_name']} ({env['cpu_count']} logical CPUs), "
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, timm {result['timm']}; {result['threads']} torch / "
        f"onnxruntime intra-op threads; OMP_WAIT_POLICY={cond['omp_wait_policy']}; glibc malloc thresholds fixed "
        f"(taslora_core.heap, as every timing loop does): {cond.get('malloc_kept', False)}.",
        f"Load average (1, 5, 15 min) before: {cond['load_before']}, after: {cond['load_after']} — the machine is "
        "shared: pairs are interleaved so that its drift hits both sides, and the ratio is the median per-pair ratio.",
        f"Timing: {result['warmup_s']} s warm-up, then interleaved pairs for about {result['row_s']} s per row "
        f"(at least {result['iters']}, at most {result['max_iters']}; the pairs column).",
    ]
    for label, before in befores:
        lines.append(f"Before ({label}): `{before['command']}`, load average before / after "
                     f"{before['conditions']['load_before']} / {before['conditions']['load_after']}; glibc malloc "
                     f"thresholds fixed: {before['conditions'].get('malloc_kept', False)}.")
    for entry in result["spaces"]:
        s = entry["subnet"]
        lines.append(f"- {entry['space']}: embed {s['embed_dim']}, depth {s['depth']}, heads {s['num_heads'][0]}, "
                     f"MLP ratio {s['mlp_ratios'][0]}; params ours {entry['ours_params']:,}, "
                     f"timm {entry['timm_params']:,}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", action="append", choices=SPACES, help="repeatable; default: all three")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--attention", choices=("fast", "reference", "none"), default="fast",
                        help="reference: the former (N, N, head_dim) attention, for the 'before' table; none: "
                             "relative positions left out (plain fused attention), what the rest of the model costs")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--iters", type=int, default=20, help="interleaved pairs per row, at least")
    parser.add_argument("--max-iters", type=int, default=400, help="interleaved pairs per row, at most")
    parser.add_argument("--row-s", type=float, default=30.0, help="seconds of pairs per row, within those bounds")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime rows")
    parser.add_argument("--re-export", action="store_true", help="export again even if --work holds the files")
    parser.add_argument("--before", type=Path, action="append",
                        help="an earlier JSON of this script: its ratios side by side, labelled by its file name "
                             "(repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "vs-timm")
    parser.add_argument("--work", type=Path, default=ROOT / "reproduction-runs" / "vs-timm",
                        help="where the ONNX exports are written (git-ignored)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to time on cuda (skipped)")
        return
    if args.attention == "reference":
        rel_pos_attention.attention = reference_attention()
    elif args.attention == "none":
        with_tables = rel_pos_attention.attention
        rel_pos_attention.attention = lambda qkv, heads, head_dim, tables, buffers: with_tables(
            qkv, heads, head_dim, None, None)
    command = " ".join([".venv/bin/python benchmarks/bench_vs_timm.py", *sys.argv[1:]])
    load_before = [round(x, 2) for x in os.getloadavg()]
    with torch_threads(args.threads):
        env = environment(str(device), args.threads)
        spaces = [bench_space(name, args, device) for name in (args.space or SPACES)]
    result = {
        "command": command, "attention": args.attention, "device": str(device), "threads": args.threads,
        "iters": args.iters, "max_iters": args.max_iters, "row_s": args.row_s, "warmup_s": args.warmup_s,
        "timm": timm_package.__version__, "environment": env,
        "conditions": {"load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
                       "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "malloc_kept": keep_freed_memory()},
        "spaces": spaces,
    }
    stem = f"{args.attention}-{device.type}"
    args.out.mkdir(parents=True, exist_ok=True)
    befores = [(path.stem, json.loads(path.read_text())) for path in args.before or []]
    result["before"] = [{"file": str(path), "attention": before["attention"], "command": before["command"],
                         "conditions": before["conditions"]} for path, (_, before) in zip(args.before or [], befores)]
    atomic_write_text(args.out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    md = markdown(result, befores)
    atomic_write_text(args.out / f"{stem}.md", md)
    print(md)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
