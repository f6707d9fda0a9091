"""`taslora export`: fold -> parity -> safetensors -> ONNX -> zero-overhead checks -> TensorRT, in one folder.

Each step records its outcome in `report.json` (rewritten atomically after every step), so a failure keeps
every artifact and result that came before it. Steps that fail are reported and make the run fail at the
end; TensorRT runs last, so without it everything else is still written.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from taslora_core.checkpoint import atomic_write_json, file_sha256
from taslora_core.complexity import flops, params
from taslora_core.run_io import LoadedCheckpoint, supernet_dir_of
from taslora_core.subnet import Subnet
from taslora_deploy.fold import FoldResult, UnmergedMoLEViT, check_parity, fold_subnet
from taslora_deploy.standalone import StandaloneViT, save_standalone

REPORT = "report.json"


@dataclass
class ExportOptions:
    """What `taslora export` does."""

    out: Path
    onnx: bool = True
    trt: bool = False
    fp16: bool = False
    no_lora: bool = False
    opset: int = 18
    parity_tolerance: float = 1e-5
    onnx_tolerance: float = 1e-4
    overhead: bool = True
    latency_mode: str = "strict"  # strict: out-of-tolerance latency fails the export; report: only recorded
    latency_batch: int = 8
    latency_iters: int = 300
    latency_warmup_s: float = 1.0
    latency_tolerance: float = 0.03
    threads: int | None = None
    trt_max_batch: int = 64
    seed: int = 0


@dataclass
class ExportReport:
    """Outcome of every step; written to report.json after each."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, step: str, value: Any) -> None:
        """Store a step's result and rewrite the report."""
        self.data[step] = value
        self.save()

    def fail(self, step: str, err: BaseException) -> None:
        """Store a step's failure (one line plus the traceback tail) and rewrite the report."""
        line = " ".join(str(err).split()) or type(err).__name__
        self.failures.append(f"{step}: {line}")
        self.data[step] = {"ok": False, "error": line, "type": type(err).__name__,
                           "trace": traceback.format_exc(limit=3)[-2000:]}
        self.save()

    def save(self) -> None:
        """Atomically rewrite report.json."""
        atomic_write_json(self.path, {**self.data, "failures": self.failures, "ok": not self.failures})


def source_hashes(ckpt: LoadedCheckpoint) -> dict[str, str]:
    """SHA-256 of the checkpoint files the export came from."""
    out: dict[str, str] = {}
    if ckpt.kind == "mole":
        out["mole.safetensors"] = file_sha256(ckpt.path / "mole.safetensors")
        out["supernet.safetensors"] = file_sha256(supernet_dir_of(ckpt.path, ckpt.meta) / "supernet.safetensors")
    else:
        out["supernet.safetensors"] = file_sha256(ckpt.path / "supernet.safetensors")
    return out


def _run_step(report: ExportReport, step: str, fn: Callable[[], Any]) -> Any:
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 - every failure is recorded; later steps still run
        report.fail(step, err)
        return None
    report.record(step, result)
    return result


def run_export(
    ckpt: LoadedCheckpoint,
    subnet: Subnet,
    options: ExportOptions,
    real_images: torch.Tensor | None = None,
    log: Callable[[str], None] = print,
) -> ExportReport:
    """Run every export step for `subnet` of `ckpt` into `options.out`; see the module docstring."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out / REPORT)
    space = ckpt.supernet.space
    supernet = ckpt.supernet.eval()
    mole = None if options.no_lora or ckpt.mole is None else ckpt.mole.eval()
    torch.manual_seed(options.seed)
    report.record("source", {"ckpt": str(ckpt.path), "kind": ckpt.kind, "sha256": source_hashes(ckpt),
                             "subnet": subnet.to_dict(), "space": space.name, "lora": mole is not None})

    # 1. router once, fold, materialise (and the no-LoRA baseline for the checks)
    folded: FoldResult = fold_subnet(supernet, subnet, mole)
    baseline = fold_subnet(supernet, subnet).model
    shape = folded.model.input_shape
    log(f"folded {'experts into ' if mole is not None else ''}subnet (embed {subnet.embed_dim}, depth {subnet.depth})")

    # 2. parity with the MoLE supernet applied at run time, on random and real images
    inputs = {"random": torch.randn(8, *shape, generator=torch.Generator().manual_seed(options.seed))}
    if real_images is not None:
        inputs["real"] = real_images[:16]
    references: dict[str, Any] = {"supernet_runtime": lambda x: supernet(x, subnet, mole.deltas(subnet) if mole else None)}
    if mole is not None:
        references["unmerged_lora_branches"] = UnmergedMoLEViT(supernet, subnet, mole)
    parity = _run_step(report, "parity", lambda: {
        "max_abs_diff": check_parity(folded.model, references, inputs, options.parity_tolerance),
        "tolerance": options.parity_tolerance, "ok": True})
    if parity is None:
        log(f"parity FAILED: {report.failures[-1]}")

    # 3. safetensors + config.json
    routing = folded.routing.tolist() if folded.routing is not None else None
    config_extra = {
        "routing": routing, "routing_entropy": folded.routing_entropy(), "lora_folded": mole is not None,
        "source": report.data["source"], "flops_autoformer": flops(space, subnet, "autoformer"),
        "flops_macs": flops(space, subnet, "macs"), "params": params(space, subnet),
    }
    _run_step(report, "standalone", lambda: {"dir": str(save_standalone(out, folded.model, config_extra)), "ok": True})
    log(f"wrote {out / 'model.safetensors'} and {out / 'config.json'}")

    onnx_path = out / "model.onnx"
    base_onnx = out / "baseline" / "model.onnx"
    if options.onnx:
        _export_onnx_steps(report, folded.model, baseline, onnx_path, base_onnx, options, inputs, log)
        if options.overhead and onnx_path.exists() and base_onnx.exists():
            _overhead_steps(report, ckpt, subnet, folded.model, baseline, mole, onnx_path, base_onnx, options, log)
    if options.trt:
        _trt_steps(report, folded.model, onnx_path, options, log)
    report.save()
    return report


def _export_onnx_steps(report, model: StandaloneViT, baseline: StandaloneViT, onnx_path: Path, base_onnx: Path,
                       options: ExportOptions, inputs: dict[str, torch.Tensor], log) -> None:
    from taslora_deploy.onnx_export import check_onnx_parity, export_onnx

    shape = model.input_shape

    def export_main() -> dict[str, Any]:
        export_onnx(model, onnx_path, input_shape=shape, opset=options.opset)
        real = inputs.get("real")
        parity = check_onnx_parity(model, onnx_path, shape, batch_sizes=(1, 7), atol=options.onnx_tolerance,
                                   inputs=real, seed=options.seed)
        return {"path": str(onnx_path), "opset": options.opset, "parity": parity, "ok": True}

    if _run_step(report, "onnx", export_main) is not None:
        log(f"wrote {onnx_path} (opset {options.opset}, dynamic batch; onnxruntime parity <= {options.onnx_tolerance:g})")
    _run_step(report, "onnx_baseline", lambda: {
        "path": str(export_onnx(baseline, base_onnx, input_shape=shape, opset=options.opset)), "ok": True})
    if options.fp16:
        half = onnx_path.with_name("model_fp16.onnx")
        _run_step(report, "onnx_fp16", lambda: {
            "path": str(export_onnx(model, half, input_shape=shape, opset=options.opset, dtype=torch.float16)), "ok": True})


def _overhead_steps(report, ckpt, subnet, model, baseline, mole, onnx_path, base_onnx, options: ExportOptions, log) -> None:
    from taslora_deploy.overhead import (assert_same_structure, interleaved_latency, ort_runner, torch_runner,
                                         within_tolerance)

    space = ckpt.supernet.space
    f = flops(space, subnet, "macs")
    _run_step(report, "zero_overhead_structure", lambda: {
        **assert_same_structure(onnx_path, base_onnx, flops_a=f, flops_b=f),
        "params_folded": sum(p.numel() for p in model.parameters()),
        "params_baseline": sum(p.numel() for p in baseline.parameters()), "ok": True})

    def latency() -> dict[str, Any]:
        b = options.latency_batch
        run_folded = ort_runner(onnx_path, b, model.input_shape, threads=options.threads, seed=options.seed)
        run_base = ort_runner(base_onnx, b, model.input_shape, threads=options.threads, seed=options.seed)
        res = interleaved_latency(run_base, run_folded, warmup_s=options.latency_warmup_s, iters=options.latency_iters)
        ok = within_tolerance(res, options.latency_tolerance, two_sided=True)
        out = {"runtime": "onnxruntime-cpu", "batch": b, "a": "baseline (no LoRA)", "b": "folded", **res,
               "tolerance": options.latency_tolerance, "within_tolerance": ok, "mode": options.latency_mode, "ok": True}
        if not ok and options.latency_mode == "strict":
            raise AssertionError(
                f"folded/baseline median latency ratio {res.get('ratio_median'):.4f} is outside 1 +- "
                f"{options.latency_tolerance:g} (spread {res.get('ratio_p10'):.3f}..{res.get('ratio_p90'):.3f}); "
                "re-run `taslora check-overhead` on a quiet machine")
        return out

    lat = _run_step(report, "zero_overhead_latency", latency)
    if lat is not None:
        log(f"latency folded/baseline (onnxruntime, batch {options.latency_batch}): median ratio {lat['ratio_median']:.4f}")
    if mole is not None:
        def unmerged() -> dict[str, Any]:
            b = options.latency_batch
            um = UnmergedMoLEViT(ckpt.supernet, subnet, mole)
            res = interleaved_latency(torch_runner(model, b, model.input_shape, seed=options.seed),
                                      torch_runner(um, b, model.input_shape, seed=options.seed),
                                      warmup_s=options.latency_warmup_s, iters=max(50, options.latency_iters // 3))
            return {"runtime": "torch-eager-cpu", "batch": b, "a": "folded", "b": "unmerged MoLE (router + LoRA branches at run time)",
                    **res, "params_unmerged": sum(p.numel() for p in um.parameters()), "ok": True}

        saved = _run_step(report, "unmerged_vs_folded", unmerged)
        if saved is not None:
            log(f"unmerged MoLE / folded latency (torch eager, batch {options.latency_batch}): {saved['ratio_median']:.3f}x")


def _trt_steps(report, model: StandaloneViT, onnx_path: Path, options: ExportOptions, log) -> None:
    from taslora_deploy.trt_engine import build_engine, compare_trt_to_ort, require_tensorrt

    def build(fp16: bool) -> dict[str, Any]:
        require_tensorrt()
        src = onnx_path.with_name("model_fp16.onnx") if fp16 else onnx_path
        plan = onnx_path.with_name("model_fp16.plan" if fp16 else "model.plan")
        build_engine(src, plan, model.input_shape, max_batch=options.trt_max_batch,
                     timing_cache_path=onnx_path.with_name("timing.cache"))
        cmp = compare_trt_to_ort(plan, onnx_path, model.input_shape, batch_sizes=(1, 8), fp16=fp16)
        return {"plan": str(plan), "compare": cmp, "ok": True}

    if _run_step(report, "tensorrt", lambda: build(False)) is not None:
        log(f"wrote {onnx_path.with_name('model.plan')}")
    if options.fp16:
        _run_step(report, "tensorrt_fp16", lambda: build(True))
