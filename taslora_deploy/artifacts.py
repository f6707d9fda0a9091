"""File names of an export folder: the one place they are spelled.

An export folder (`exports/<run>/` in the workspace, or `--out`) holds::

    model.safetensors + config.json   standalone PyTorch model (load_standalone); config.json's "pretrained_cfg"
                                      says how to feed it (taslora_deploy.preprocessing)
    model.onnx                        folded model, single file, dynamic batch; the same record in its
                                      metadata_props (pretrained_cfg.*), beside the certificate's (taslora.*)
    model_fp16.onnx                   mixed fp16 twin (--precision fp16 or --fp16)
    model_int8.onnx                   static int8 QDQ twin (--precision int8)
    baseline/model.onnx               the no-LoRA subnet, for the zero-overhead checks
    baseline/model_fp16.onnx, ...     the no-LoRA subnet at each twin's precision (made the same way as the twin)
    certificate.json                  the zero-overhead certificate of model.onnx (of model.safetensors without
                                      --onnx): structure, parity, latency, verdict
    certificate_fp16.json, ...        the certificate of each precision twin
    model.plan, model_fp16.plan,      TensorRT engines (--trt), timing.cache
    model_int8.plan
    report.json                       every export step's outcome
    overhead.json, bench.json         written by `check-overhead` and `bench`
"""

from __future__ import annotations

from pathlib import Path

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"
MODEL_ONNX = "model.onnx"
MODEL_FP16_ONNX = "model_fp16.onnx"
MODEL_INT8_ONNX = "model_int8.onnx"
BASELINE_DIR = "baseline"
BASELINE_ONNX = f"{BASELINE_DIR}/{MODEL_ONNX}"  # relative to the export folder
MODEL_PLAN = "model.plan"
MODEL_FP16_PLAN = "model_fp16.plan"
MODEL_INT8_PLAN = "model_int8.plan"
PRECISION_ONNX = {"fp32": MODEL_ONNX, "fp16": MODEL_FP16_ONNX, "int8": MODEL_INT8_ONNX}
PRECISION_PLAN = {"fp32": MODEL_PLAN, "fp16": MODEL_FP16_PLAN, "int8": MODEL_INT8_PLAN}
CERTIFICATE = "certificate.json"
PRECISION_CERTIFICATE = {"fp32": CERTIFICATE, "fp16": "certificate_fp16.json", "int8": "certificate_int8.json"}
TIMING_CACHE = "timing.cache"
REPORT = "report.json"
OVERHEAD_REPORT = "overhead.json"
BENCH_RESULTS = "bench.json"


def baseline_onnx(export_dir: str | Path) -> Path:
    """The no-LoRA twin's ONNX file inside an export folder."""
    return Path(export_dir) / BASELINE_ONNX


def baseline_twin(export_dir: str | Path, precision: str) -> Path:
    """The no-LoRA model at `precision` inside an export folder (baseline/model.onnx for fp32)."""
    return Path(export_dir) / BASELINE_DIR / PRECISION_ONNX[precision]
