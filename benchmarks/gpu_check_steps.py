"""The Python half of `benchmarks/gpu_check.sh`: the steps that are not a `taslora` command, the key number of each
step, and the summary table.

    python benchmarks/gpu_check_steps.py train-step --device cuda --out R/train_step.json [--dry-run]
    python benchmarks/gpu_check_steps.py overhead-models --out R/overhead [--dry-run]
    python benchmarks/gpu_check_steps.py certificate --models R/overhead --device cuda --out R/overhead/certificate.json
    python benchmarks/gpu_check_steps.py summary R          # summary.md + summary.json from R/steps.jsonl

`train-step` times the MoLE step against the plain step (benchmarks/bench_train_step.py's `bench`) at
AutoFormer-T scale in bf16 (fmnist, tiny, on the CPU in a dry run). `overhead-models` writes two standalone
models of one subnet of a random-weight AutoFormer-T MoLE (fmnist in a dry run): `folded/` with its routed
experts folded in and `baseline/` without LoRA, for `taslora bench --compare` on torch-cuda. `certificate` runs the
zero-overhead certificate's latency test (`taslora_deploy.certificate.latency`, the export's settings) on that pair:
torch-cuda timed with CUDA events on each runner's stream (torch-cpu and a 1 s limit in a dry run). Every step
appends one JSON line to steps.jsonl (written by the shell script); `summary` reads each step's outputs for its key
number (the doctor's from `taslora doctor --json`).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
STEPS_FILE = "steps.jsonl"


# ----------------------------------------------------------------------------- steps


def train_step(device: str, out: Path, dry_run: bool) -> dict[str, Any]:
    """MoLE step vs plain step (medians, router+merge share) written to `out` as JSON."""
    import torch

    sys.path.insert(0, str(HERE))
    from bench_train_step import bench  # noqa: PLC0415 (benchmarks/ is not a package)

    if dry_run:
        plan = [("fmnist", 16, 2, 1, False)]
    else:
        plan = [("autoformer-t", 64, 10, 3, True), ("fmnist", 128, 20, 3, True)]
    rows = []
    for space, batch, steps, warmup, amp in plan:
        r = bench(space, batch, steps, warmup, torch.device(device), amp, 0)
        med = r["median"]
        rows.append({"space": space, "batch": batch, "steps": steps, "amp": "bf16" if amp else "off",
                     "plain_ms": 1e3 * med["plain"], "mole_ms": 1e3 * med["mole"],
                     "mole_over_plain": r["ratio_of_medians"], "paired_ratio": r["median_paired_ratio"],
                     "router_merge_share": med["merge_fwd_bwd"] / med["mole"]})
    doc = {"device": device, "torch": torch.__version__, "rows": rows}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def overhead_models(out: Path, dry_run: bool) -> Path:
    """`out/folded` and `out/baseline`: one subnet of a random MoLE, with its experts folded in and without LoRA."""
    from taslora_core.subnet import sample_subnet
    from taslora_core.testing import random_mole
    from taslora_deploy.fold import fold_subnet
    from taslora_deploy.standalone.io import save_standalone

    mole = random_mole("fmnist" if dry_run else "autoformer-t", 0, expert_std=0.05)
    subnet = sample_subnet(mole.supernet.space, random.Random(0))
    save_standalone(out / "folded", fold_subnet(mole.supernet, subnet, mole).model)
    save_standalone(out / "baseline", fold_subnet(mole.supernet, subnet).model)
    (out / "subnet.json").write_text(json.dumps(subnet.to_dict()) + "\n")
    return out


def certificate(models: Path, device: str, out: Path, dry_run: bool) -> dict[str, Any]:
    """The certificate's latency test of `models/folded` against `models/baseline` on torch-`device` (CUDA events
    on CUDA), written to `out` as JSON."""
    from taslora_deploy.certificate.latency import EXPORT_TEST, latency_certificate
    from taslora_deploy.runners import runtime_device, runtime_runner
    from taslora_deploy.standalone.io import load_standalone

    runtime = "torch-cuda" if device.startswith("cuda") else "torch-cpu"
    pair = load_standalone(models / "baseline"), load_standalone(models / "folded")
    config = EXPORT_TEST.with_options(time_limit_s=1.0, warmup_s=0.1, resamples=100) if dry_run else EXPORT_TEST

    def make_pair(batch: int):
        return tuple(runtime_runner(runtime, m, batch, m.input_shape, seed=0) for m in pair)

    on = runtime_device(runtime)
    doc = latency_certificate(make_pair, config, runtime, device=on, events=on == "cuda")
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return doc


# ----------------------------------------------------------------------------- key numbers


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _key_doctor(report: Path) -> str:
    checks = {c["name"]: c for c in _json(report / "doctor.json")["checks"]}
    cuda = checks.get("CUDA devices") or {}
    return f"CUDA: {cuda['detail']}" if cuda.get("status") == "ok" else "no CUDA device"


def _key_gpu_tests(report: Path) -> str:
    log = (report / "gpu_tests.log").read_text(encoding="utf-8", errors="replace")
    lines = [ln.strip("= ").strip() for ln in log.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", ln)]
    return re.sub(r" in [\d.]+s.*", "", lines[-1]) if lines else "no pytest summary line"


def _key_train_step(report: Path) -> str:
    rows = _json(report / "train_step.json")["rows"]
    return "; ".join(f"{r['space']} b{r['batch']} {r['amp']}: MoLE/plain {r['mole_over_plain']:.2f}, "
                     f"router+merge {100 * r['router_merge_share']:.1f}%" for r in rows)


def _key_vs_timm(report: Path) -> str:
    result = _json(next((report / "vs_timm").glob("fast-*.json")))
    return "; ".join(f"{e['space']} {r['path'].split(',')[0].replace('train step', 'train')}"
                     f"{' (' + r['path'].split(', ')[1] + ')' if ', ' in r['path'] else ''} b{r['batch']} "
                     f"{r['ratio']:.2f}" for e in result["spaces"] for r in e["rows"][:3])


def _key_overhead(report: Path) -> str:
    rows = _json(report / "overhead" / "bench.json")
    parts = []
    for r in rows:
        vs = r.get("vs_baseline")
        if vs is None:
            continue
        paired = (vs.get("paired") or {}).get("ratio_median")
        ratio = paired if paired is not None else vs["ratio_of_medians"]
        parts.append(f"b{r['batch']}{' graph' if r.get('cuda_graph') else ''} {ratio:.3f}")
    key = "folded/no-LoRA " + ", ".join(parts) if parts else "no ratio rows"
    cert = report / "overhead" / "certificate.json"
    if cert.is_file():
        lat = _json(cert)
        per = ", ".join(f"b{b} {r['ratio']:.3f} ({r['pairs']} pairs of {r['inner']})" for b, r in lat["batches"].items())
        key += f"; certificate {lat['runtime']} ({lat['batches'][next(iter(lat['batches']))]['clock']}): " \
               f"{lat['verdict']}, {per}"
    return key


def _key_quickstart(report: Path) -> str:
    s = _json(report / "ws" / "quickstart-summary.json")
    lat = s.get("latency_ratio_folded_vs_baseline")
    return (f"top-1 {100 * s['top1_with_mole']:.2f}%, total {s['total_s']:.0f} s"
            + (f", folded/no-LoRA {lat:.3f}" if lat is not None else ""))


def _key_latency_search(report: Path) -> str:
    best = _json(report / "latency_best.json")
    ms = best.get("latency_ms")
    return f"best: {best.get('flops_autoformer', 0) / 1e6:.2f}M FLOPs" + (f", {ms:.3f} ms" if ms is not None else "")


def _key_tensorrt(report: Path) -> str:
    rows = [r for r in _json(report / "trt" / "bench.json") if r.get("runtime") == "tensorrt"]
    return ", ".join(f"{Path(r['artifact']).name} b{r['batch']}{' graph' if r.get('cuda_graph') else ''} "
                     f"{r['p50_ms']:.3f} ms" for r in rows) or "no engine rows"


KEYS: dict[str, Callable[[Path], str]] = {
    "doctor": _key_doctor, "gpu_tests": _key_gpu_tests, "train_step": _key_train_step, "vs_timm": _key_vs_timm,
    "overhead": _key_overhead,
    "quickstart": _key_quickstart, "latency_search": _key_latency_search, "tensorrt": _key_tensorrt,
}


def key_number(step: str, report: Path) -> str:
    """The step's key number read from its outputs, or why it cannot be read."""
    try:
        return KEYS[step](report) if step in KEYS else ""
    except Exception as exc:  # noqa: BLE001 - a missing or odd output file must not hide the other steps
        return f"(no key number: {type(exc).__name__}: {' '.join(str(exc).split())[:120]})"


def summary(report: Path) -> list[dict[str, Any]]:
    """Read steps.jsonl, add each step's key number, write summary.json and summary.md, print the table."""
    steps = [json.loads(ln) for ln in (report / STEPS_FILE).read_text(encoding="utf-8").splitlines() if ln.strip()]
    for s in steps:
        if s["status"] in ("ok", "failed", "timeout"):
            s["key"] = key_number(s["step"], report)
        s.setdefault("key", s.get("reason", ""))
    (report / "summary.json").write_text(json.dumps(steps, indent=2) + "\n", encoding="utf-8")
    header = ["step", "status", "seconds", "key number"]
    cells = [[s["step"], s["status"], f"{s['seconds']:.0f}", s["key"]] for s in steps]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
    (report / "summary.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return steps


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train-step")
    t.add_argument("--device", default="cuda")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--dry-run", action="store_true")
    o = sub.add_parser("overhead-models")
    o.add_argument("--out", type=Path, required=True)
    o.add_argument("--dry-run", action="store_true")
    c = sub.add_parser("certificate")
    c.add_argument("--models", type=Path, required=True)
    c.add_argument("--device", default="cuda")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("summary")
    s.add_argument("report", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "train-step":
        print(json.dumps(train_step(args.device, args.out, args.dry_run), indent=2))
    elif args.cmd == "overhead-models":
        print(overhead_models(args.out, args.dry_run))
    elif args.cmd == "certificate":
        print(certificate(args.models, args.device, args.out, args.dry_run)["verdict"])
    else:
        steps = summary(args.report)
        return 1 if any(s["status"] in ("failed", "timeout") for s in steps) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
