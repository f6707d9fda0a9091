"""The export's reduced-precision steps: one artifact per precision, each with its own accuracy gate.

``onnx_fp16`` / ``onnx_int8`` write ``model_fp16.onnx`` / ``model_int8.onnx`` from the verified fp32
``model.onnx`` and gate them against it on the run's test split (and make ``baseline/model_fp16.onnx`` /
``baseline/model_int8.onnx`` the same way from the no-LoRA ``baseline/model.onnx``, for the twins' certificates); ``tensorrt_fp16`` / ``tensorrt_int8`` build
engines from those same files (TensorRT strongly typed / explicit quantization) and gate the engines the same
way. A failing step (a gate, missing data) is recorded and the other steps still run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from taslora_core.run_io import LoadedCheckpoint
from taslora_deploy.artifacts import PRECISION_ONNX, PRECISION_PLAN, baseline_twin

__all__ = ["PRECISIONS", "REDUCED_PRECISIONS", "GateData", "parse_precisions", "precision_steps", "trt_precision_steps"]

PRECISIONS = ("fp32", "fp16", "int8")
REDUCED_PRECISIONS = ("fp16", "int8")


class Steps(Protocol):
    """What the export's step recorder offers (pipeline._StepRecorder)."""

    out: Path
    data: dict[str, Any]

    def run(self, step: str, fn: Callable[[], Any], writes: tuple[Path, ...] = ()) -> Any: ...


def parse_precisions(values: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """`--precision` values (repeatable, each comma-separated) -> ordered unique precisions; fp32 always first."""
    chosen = {"fp32"}
    for value in values or ():
        for part in str(value).split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in PRECISIONS:
                raise ValueError(f"--precision takes {', '.join(PRECISIONS)} (repeat it or separate with commas), not '{name}'")
            chosen.add(name)
    return tuple(p for p in PRECISIONS if p in chosen)


class GateData:
    """The gate's test batches and the fp32 export's logits on them: loaded and computed once per export, for
    every precision and every engine."""

    def __init__(self, ckpt: LoadedCheckpoint, n: int | None) -> None:
        self.ckpt, self.n = ckpt, n
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._reference: list[np.ndarray] | None = None
        self.missing = ""  # why there is no test data (the run recorded none), else ""

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The test batches; None when the run records no data (other data problems raise)."""
        from taslora_core.run_data import RunDataMissing

        if self._batches is None and not self.missing:
            from taslora_deploy.precision.data import gate_batches

            try:
                self._batches = gate_batches(self.ckpt, self.n)
            except RunDataMissing:
                self.missing = f"checkpoint {self.ckpt.path} records no training data, so there is no test split to gate on"
        return self._batches

    def reference(self, onnx_path: Path, threads: int | None) -> list[np.ndarray]:
        """The fp32 export's logits on `batches()` (onnxruntime CPU), computed on first use."""
        if self._reference is None:
            from taslora_deploy.precision.gate import predictor

            run = predictor(onnx_path, threads)
            self._reference = [run(images.float().cpu().numpy()).astype(np.float32) for images, _ in self.batches() or ()]
        return self._reference


def _within_profile(runner: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The engine as images -> logits, feeding batches larger than its optimisation profile in chunks (the gate's
    batches hold up to 500 images; the profile stops at --trt-max-batch)."""
    largest = int(runner.batch_range[2])

    def run(x: np.ndarray) -> np.ndarray:
        chunks = [x[i:i + largest] for i in range(0, len(x), largest)]
        return np.concatenate([runner(torch.from_numpy(c)).float().cpu().numpy() for c in chunks])

    return run


def _file_facts(path: Path) -> dict[str, Any]:
    return {"path": str(path), "size_bytes": path.stat().st_size}


def precision_steps(steps: Steps, ckpt: LoadedCheckpoint, onnx_path: Path, precisions: tuple[str, ...], *,
                    calib_size: int, max_top1_drop: dict[str, float], data: GateData,
                    threads: int | None, log: Callable[[str], None]) -> None:
    """Write and gate every reduced precision in `precisions` next to the fp32 `onnx_path`."""
    from taslora_deploy.precision.convert import FP32_OPS, convert_fp16, ort_cpu_fp32_fallbacks, quantize_int8
    from taslora_deploy.precision.data import calibration_images
    from taslora_deploy.precision.gate import accuracy_gate, gate_summary

    steps.data["gate_data"] = {"split": "test", "images": data.n or "all"}
    for precision in (p for p in REDUCED_PRECISIONS if p in precisions):
        target = onnx_path.with_name(PRECISION_ONNX[precision])
        base_src, base_target = baseline_twin(onnx_path.parent, "fp32"), baseline_twin(onnx_path.parent, precision)

        def make(precision: str = precision, target: Path = target, base_target: Path = base_target) -> dict[str, Any]:
            if not (steps.data.get("onnx") or {}).get("ok"):
                raise FileNotFoundError(f"{onnx_path.name} did not pass its step; no {precision} twin is made from it")
            # the no-LoRA subnet at the same precision, made the same way: what the twin's certificate compares with
            twin_baseline = (steps.data.get("onnx_baseline") or {}).get("ok") and base_src.is_file()
            if precision == "fp16":
                convert_fp16(onnx_path, target)
                if twin_baseline:
                    convert_fp16(base_src, base_target)
                facts = {"kept_fp32": [*FP32_OPS, "classifier head"],
                         "ort_cpu_fp32_fallback_ops": ort_cpu_fp32_fallbacks(target)}
            else:
                if data.batches() is None:
                    raise ValueError(f"int8 needs calibration images of the run's validation split: {data.missing}")
                images = calibration_images(ckpt, calib_size)
                quantize_int8(onnx_path, images, target)
                if twin_baseline:
                    quantize_int8(base_src, images, base_target)
                facts = {"scheme": "static QDQ, per-channel symmetric int8 weights, symmetric int8 activations (MinMax)",
                         "calibration": {"split": "validation", "images": len(images)}}
            facts["baseline_twin"] = str(base_target) if twin_baseline else None
            batches = data.batches()
            if batches is None:  # fp16 of a run without recorded data (an imported AutoFormer supernet): as before --precision
                log(f"note: {target.name} is NOT accuracy-gated: {data.missing}")
                return {**_file_facts(target), "size_fp32_bytes": onnx_path.stat().st_size, **facts,
                        "gate": {"skipped": data.missing}, "ok": True}
            gate = accuracy_gate(data.reference(onnx_path, threads), target, batches, max_top1_drop[precision],
                                 threads=threads)
            return {**_file_facts(target), "size_fp32_bytes": onnx_path.stat().st_size, **facts, "gate": gate, "ok": True}

        result = steps.run(f"onnx_{precision}", make, writes=(target, base_target))
        if result is None:
            log(f"{precision} FAILED: {steps.data[f'onnx_{precision}'].get('error')}")
        elif "skipped" not in result["gate"]:
            log(f"wrote {target}: {gate_summary(result['gate'])}")


def trt_precision_steps(steps: Steps, onnx_path: Path, precisions: tuple[str, ...], *,
                        build: Callable[[Path, Path, str], dict[str, Any]], max_top1_drop: dict[str, float],
                        data: GateData, threads: int | None, log: Callable[[str], None]) -> None:
    """TensorRT engines from the reduced-precision ONNX files that passed their step, gated like them.

    `build(onnx, plan, precision)` builds (and, for fp16, compares) one engine and returns its record."""
    from taslora_deploy.precision.gate import accuracy_gate

    for precision in (p for p in REDUCED_PRECISIONS if p in precisions):
        src, plan = onnx_path.with_name(PRECISION_ONNX[precision]), onnx_path.with_name(PRECISION_PLAN[precision])

        def make(precision: str = precision, src: Path = src, plan: Path = plan) -> dict[str, Any]:
            if not (steps.data.get(f"onnx_{precision}") or {}).get("ok"):
                raise FileNotFoundError(f"{src.name} did not pass its step; no {precision} engine is built from it")
            record = build(src, plan, precision)
            from taslora_deploy.trt_engine import TrtRunner

            runner = TrtRunner(plan)
            if data.batches() is None:
                return {**record, **_file_facts(plan), "gate": {"skipped": data.missing}, "ok": True}
            gate = accuracy_gate(data.reference(onnx_path, threads), _within_profile(runner), data.batches(),
                                 max_top1_drop[precision])
            return {**record, **_file_facts(plan), "gate": gate, "ok": True}

        if steps.run(f"tensorrt_{precision}", make, writes=(plan,)) is not None:
            log(f"wrote {plan}")
