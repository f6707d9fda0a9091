"""bench(): ONNX and nn.Module artefacts, statistics, table and JSON round trip (tiny budgets)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from rich.table import Table

from conftest import without_trt
from tiny_vit import TinyViT
from taslora_deploy.bench import bench, bench_table, environment, latency_stats, write_json
from taslora_deploy.onnx_export import export_onnx
from taslora_deploy.trt_engine import TensorRTUnavailable, build_engine

SHAPE = (3, 16, 16)
FAST = dict(warmup_s=0.02, min_iters=5, min_time_s=0.02)
STAT_KEYS = ("mean_ms", "median_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "std_ms",
             "cv", "throughput_ips", "iters")


def _model() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT().eval()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return export_onnx(_model(), tmp_path_factory.mktemp("bench") / "tiny.onnx", input_shape=SHAPE)


def _check_result(r: dict, batch: int) -> None:
    for key in STAT_KEYS:
        assert key in r, key
    assert r["batch"] == batch
    assert r["iters"] >= FAST["min_iters"]
    assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["p50_ms"] == r["median_ms"]
    assert r["min_ms"] <= r["mean_ms"] <= r["max_ms"]
    assert r["std_ms"] >= 0 and r["throughput_ips"] > 0
    assert r["input_shape"] == list(SHAPE)
    env = r["environment"]
    for key in ("device_name", "cpu_model", "torch", "onnxruntime", "tensorrt", "threads", "python"):
        assert key in env


def test_bench_onnx(onnx_path):
    results = bench(onnx_path, batch_sizes=(1, 4), threads=1, **FAST)
    assert [r["batch"] for r in results] == [1, 4]
    for r, b in zip(results, (1, 4)):
        _check_result(r, b)
        assert r["runtime"] == "onnxruntime"
        assert r["provider"] == "CPUExecutionProvider"
        assert r["artifact"] == str(onnx_path)
        assert r["dtype"] == "float32"
        assert r["environment"]["threads"] == 1


def test_bench_module_table_and_json(onnx_path, tmp_path):
    results = bench(onnx_path, batch_sizes=(2,), **FAST)
    results += bench(_model(), batch_sizes=(2,), input_shape=SHAPE, name="tiny-torch", **FAST)
    _check_result(results[1], 2)
    assert results[1]["runtime"] == "torch" and results[1]["artifact"] == "tiny-torch"
    assert results[1]["provider"] == "cpu"

    table = bench_table(results)
    assert isinstance(table, Table)
    assert table.row_count == len(results)

    out = write_json(results, tmp_path / "sub" / "bench.json")
    assert json.loads(out.read_text()) == results
    assert not [p for p in out.parent.iterdir() if p.name != "bench.json"]  # no temp files left


def test_bench_module_compile_failure_falls_back(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler in this sandbox")

    monkeypatch.setattr(torch, "compile", broken_compile)
    (r,) = bench(_model(), batch_sizes=(1,), input_shape=SHAPE, compile=True, **FAST)
    assert r["runtime"] == "torch"
    assert "torch.compile failed" in r["note"] and "no C++ compiler" in r["compile_error"]
    _check_result(r, 1)


def test_bench_module_needs_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        bench(nn.Linear(4, 2), batch_sizes=(1,), **FAST)


def test_bench_bad_artifacts(tmp_path):
    with pytest.raises(FileNotFoundError):
        bench(tmp_path / "missing.onnx", **FAST)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        bench(tmp_path, **FAST)  # a directory without a standalone model
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        bench(tmp_path / "x.txt", **FAST)
    with pytest.raises(TypeError):
        bench(42, **FAST)


@without_trt
def test_bench_plan_without_tensorrt(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a plan")
    with pytest.raises(TensorRTUnavailable):
        bench(plan, device="cuda", **FAST)


@pytest.mark.trt
def test_bench_tensorrt_plan(onnx_path, tmp_path):
    plan = build_engine(onnx_path, tmp_path / "tiny.plan", SHAPE, max_batch=8)
    results = bench(plan, batch_sizes=(1, 4), device="cuda", **FAST)
    for r, b in zip(results, (1, 4), strict=True):
        _check_result(r, b)
        assert r["runtime"] == "tensorrt" and r["provider"] == "TensorRT" and r["artifact"] == str(plan)


def test_latency_stats_and_environment():
    s = latency_stats([0.001, 0.002, 0.003, 0.004], batch=8)
    assert s["mean_ms"] == pytest.approx(2.5)
    assert s["median_ms"] == pytest.approx(2.5)
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(4.0)
    assert s["throughput_ips"] == pytest.approx(8 * 4 / 0.010)
    with pytest.raises(ValueError):
        latency_stats([], batch=1)
    env = environment("cpu", threads=2)
    assert env["threads"] == 2 and env["torch"] == torch.__version__
    json.dumps(env)


def test_bench_standalone_directory(tmp_path, monkeypatch):
    """Directory artefacts go through load_standalone (faked here); input shape comes from config.json."""
    from taslora_deploy import standalone_io
    seen = []

    def fake_load_standalone(directory, *args, **kwargs):
        seen.append(directory)
        return _model()

    monkeypatch.setattr(standalone_io, "load_standalone", fake_load_standalone)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"input_shape": list(SHAPE)}))
    (r,) = bench(tmp_path, batch_sizes=(2,), **FAST)
    assert seen == [tmp_path]
    assert r["runtime"] == "torch" and r["artifact"] == str(tmp_path)
    _check_result(r, 2)
