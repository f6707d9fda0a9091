"""TensorRT: import guard and status on machines without it; build/run/parity where TRT + CUDA exist."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from conftest import without_trt
from tiny_vit import TinyViT
from taslora_deploy.onnx_export import ParityError, export_onnx
from taslora_deploy.trt_engine import (
    TensorRTUnavailable,
    TrtRunner,
    build_engine,
    compare_trt_to_ort,
    require_tensorrt,
    tensorrt_status,
)

SHAPE = (3, 16, 16)


def _model() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT().eval()


# ----------------------------------------------------------------------------- without TensorRT


def _tensorrt_imports() -> bool:
    try:
        importlib.import_module("tensorrt")
    except Exception:  # noqa: BLE001 - a broken install (missing libnvinfer) counts as absent
        return False
    return True


def test_status_matches_what_is_installed():
    """available == (tensorrt imports and CUDA is present); the reason is one line either way."""
    ok, reason = tensorrt_status()
    assert ok is (_tensorrt_imports() and torch.cuda.is_available())
    assert reason and "\n" not in reason and reason.strip() == reason


@without_trt
def test_status_false_with_reason_and_require_raises_one_line():
    ok, reason = tensorrt_status()
    assert ok is False
    # the reason names what is missing: the package first, else the device
    assert reason.startswith("no CUDA device" if _tensorrt_imports() else "tensorrt is not installed"), reason
    with pytest.raises(TensorRTUnavailable) as info:
        require_tensorrt()
    msg = str(info.value)
    assert msg == reason
    assert "\n" not in msg and msg.strip() == msg
    assert isinstance(info.value, RuntimeError)


@without_trt
def test_trt_entry_points_raise_unavailable(tmp_path):
    with pytest.raises(TensorRTUnavailable):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", SHAPE)
    with pytest.raises(TensorRTUnavailable):
        TrtRunner(tmp_path / "m.plan")
    with pytest.raises(TensorRTUnavailable):
        compare_trt_to_ort(tmp_path / "m.plan", tmp_path / "m.onnx", SHAPE, (1,), fp16=False)
    assert not (tmp_path / "m.plan").exists()


# ----------------------------------------------------------------------------- with TensorRT + CUDA


@pytest.mark.trt
def test_status_true_names_version_and_device():
    ok, reason = tensorrt_status()
    trt = require_tensorrt()
    assert ok is True and reason == f"tensorrt {trt.__version__} on {torch.cuda.get_device_name()}"


@pytest.fixture(scope="module")
def trt_artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    model = _model()
    fp32 = export_onnx(model, d / "tiny.onnx", input_shape=SHAPE)
    fp16 = export_onnx(model, d / "tiny_fp16.onnx", input_shape=SHAPE, dtype=torch.float16)
    cache = d / "timing.cache"
    plan32 = build_engine(fp32, d / "tiny.plan", SHAPE, min_batch=1, opt_batch=4, max_batch=16,
                          timing_cache_path=cache)
    plan16 = build_engine(fp16, d / "tiny_fp16.plan", SHAPE, min_batch=1, opt_batch=4, max_batch=16,
                          timing_cache_path=cache)
    return {"model": model, "fp32": fp32, "fp16": fp16, "plan32": plan32, "plan16": plan16, "cache": cache}


@pytest.mark.trt
def test_build_engine_writes_plan_and_timing_cache(trt_artifacts, tmp_path):
    assert trt_artifacts["plan32"].stat().st_size > 0
    assert trt_artifacts["cache"].stat().st_size > 0
    # rebuilding with the saved cache works and leaves no temp files
    again = build_engine(trt_artifacts["fp32"], tmp_path / "again.plan", SHAPE, max_batch=16,
                         timing_cache_path=trt_artifacts["cache"])
    assert again.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.plan"]


@pytest.mark.trt
def test_runner_fp32_matches_torch(trt_artifacts):
    runner = TrtRunner(trt_artifacts["plan32"])
    assert runner.input_dtype == torch.float32
    assert runner.input_shape == SHAPE
    assert runner.batch_range == (1, 4, 16)
    x = torch.randn(5, *SHAPE)
    out = runner(x)
    assert out.is_cuda and tuple(out.shape) == (5, 10)
    with torch.inference_mode():
        ref = trt_artifacts["model"](x)
    assert (out.float().cpu() - ref).abs().max().item() < 1e-3
    with pytest.raises(ValueError, match="profile"):
        runner(torch.randn(17, *SHAPE))


@pytest.mark.trt
def test_runner_fp16_engine_takes_half_inputs(trt_artifacts):
    runner = TrtRunner(trt_artifacts["plan16"])
    assert runner.input_dtype == torch.float16
    out = runner(torch.randn(3, *SHAPE))  # fp32 input is cast to the engine's dtype
    assert tuple(out.shape) == (3, 10) and torch.isfinite(out.float()).all()


@pytest.mark.trt
def test_compare_fp32_engine_to_ort(trt_artifacts):
    rep = compare_trt_to_ort(trt_artifacts["plan32"], trt_artifacts["fp32"], SHAPE, (1, 8, 16), fp16=False)
    assert rep["ok"] and rep["max_abs_diff"] <= 1e-3
    assert set(rep["per_batch"]) == {1, 8, 16}
    with pytest.raises(ParityError):  # an impossible tolerance must fail
        compare_trt_to_ort(trt_artifacts["plan32"], trt_artifacts["fp32"], SHAPE, (8,), fp16=False, atol=0.0)


@pytest.mark.trt
def test_compare_fp16_engine_to_ort(trt_artifacts):
    rep = compare_trt_to_ort(trt_artifacts["plan16"], trt_artifacts["fp32"], SHAPE, (1, 8, 16), fp16=True)
    assert rep["ok"] and rep["mean_abs_diff"] <= 1e-2 and rep["top1_agreement"] >= 0.99
    assert rep["engine_input_dtype"] == "torch.float16"
    assert np.isfinite(rep["max_abs_diff"])
    with pytest.raises(ParityError):
        compare_trt_to_ort(trt_artifacts["plan16"], trt_artifacts["fp32"], SHAPE, (8,), fp16=True, mean_atol=0.0)
