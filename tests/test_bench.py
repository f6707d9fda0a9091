"""bench(): ONNX and nn.Module artefacts, statistics, table and JSON round trip (tiny budgets); benchmark():
unique labels, bench.json / bench.png, --compare ratios on a controlled clock; the `taslora bench` command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from rich.table import Table
from typer.testing import CliRunner

from conftest import without_cuda, without_trt
from tiny_vit import TinyViT
from taslora_cli.main import app
from taslora_deploy.bench import prepare
from taslora_deploy.bench.describe import artifact_labels, describe_artifacts, onnx_precision
from taslora_deploy.bench.report import compare_ratios
from taslora_deploy.bench.verb import bench, bench_table, benchmark, environment, latency_stats, write_json
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


def test_benchmark_checks_every_artifact_before_printing_or_timing(tmp_path, onnx_path):
    """`taslora bench /etc/passwd` used to print 'benchmarking passwd (unknown, unknown)' before its error."""
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0\n")
    said: list[str] = []
    with pytest.raises(ValueError, match="unsupported artefact .*passwd: expected .onnx"):
        benchmark([onnx_path, text], out=tmp_path / "o", log=said.append, **FAST)
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        benchmark([onnx_path, tmp_path], out=tmp_path / "o", log=said.append, **FAST)
    assert said == [] and not (tmp_path / "o").exists()  # nothing printed, timed or written
    res = CliRunner().invoke(app, ["bench", str(text)])
    assert res.exit_code == 2 and "benchmarking" not in res.output
    assert res.stderr.strip().startswith("error: unsupported artefact")


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
    seen = []

    def fake_load_standalone(directory, *args, **kwargs):
        seen.append(directory)
        return _model()

    monkeypatch.setattr("taslora_deploy.standalone.io.load_standalone", fake_load_standalone)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"input_shape": list(SHAPE)}))
    (r,) = bench(tmp_path, batch_sizes=(2,), **FAST)
    assert seen == [tmp_path]
    assert r["runtime"] == "torch" and r["artifact"] == str(tmp_path)
    _check_result(r, 2)


# --------------------------------------------------------------------------- labels, precision, bench.json, --compare


def _onnx_file(path: Path, quantized: bool = False, weights: np.dtype = np.float32) -> Path:
    """A minimal valid ONNX file: y = x * w (with a QuantizeLinear/DequantizeLinear pair when ``quantized``)."""
    h, TP = onnx.helper, onnx.TensorProto
    elem = TP.FLOAT16 if weights == np.float16 else TP.FLOAT
    inits = [onnx.numpy_helper.from_array(np.ones((3, 1, 1), dtype=weights), "w")]
    nodes = [h.make_node("Mul", ["x", "w"], ["y"])]
    if quantized:
        inits += [onnx.numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  onnx.numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                 h.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]), h.make_node("Mul", ["dq", "w"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", elem, ["batch", 3, 4, 4])],
                         [h.make_tensor_value_info("y", elem, ["batch", 3, 4, 4])], inits)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), str(path))
    return path


def test_two_model_onnx_files_get_distinct_labels_with_kind_and_precision(tmp_path):
    run = tmp_path / "exports" / "run-a"
    folded, base = _onnx_file(run / "model.onnx"), _onnx_file(run / "baseline" / "model.onnx", quantized=True)
    half = _onnx_file(tmp_path / "exports" / "run-b" / "model.onnx", weights=np.float16)
    assert artifact_labels([folded, base, half]) == ["run-a/model.onnx", "baseline/model.onnx", "run-b/model.onnx"]
    assert artifact_labels([folded]) == ["model.onnx"]
    assert artifact_labels([folded, folded]) == ["model.onnx", "model.onnx#2"]
    assert artifact_labels([run, folded]) == ["run-a/", "model.onnx"]  # folders read as folders
    infos = describe_artifacts([folded, base, half])
    assert [(i.kind, i.precision) for i in infos] == [("onnx", "fp32"), ("onnx", "int8 QDQ"), ("onnx", "fp16")]
    assert infos[0].size_bytes == folded.stat().st_size and infos[0].path == str(folded)
    assert onnx_precision(half) == "fp16"


@pytest.fixture
def controlled(monkeypatch):
    """A clock that moves only when a fake onnxruntime runner runs: ``ms[label]`` x batch per call."""
    now, costs = [0.0], {}
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def fake_ort_runner(path, batch, input_shape=None, device="cpu", threads=None, allow_spinning=False):
        def run():
            now[0] += costs[Path(path).parent.name] * batch / 1e3

        run.input_shape, run.provider, run.dtype = (3, 4, 4), "CPUExecutionProvider", "float32"
        return run

    monkeypatch.setattr(prepare, "ort_runner", fake_ort_runner)
    return costs


def test_benchmark_writes_bench_json_and_png_with_exact_compare_ratios(tmp_path, controlled):
    run = tmp_path / "exports" / "run-a"
    (run / "report.json").parent.mkdir(parents=True)
    (run / "report.json").write_text("{}")
    folded, base = _onnx_file(run / "model.onnx"), _onnx_file(run / "baseline" / "model.onnx")
    controlled.update({"run-a": 1.0, "baseline": 2.0})  # folded: 1 ms per image, baseline: 2 ms per image
    result = benchmark([base, folded], batch_sizes=(1, 4), warmup_s=0.0, min_iters=5, min_time_s=0.0,
                       compare="baseline/model.onnx", paired_iters=4, log=lambda _: None)
    assert result.json_path == run / "bench.json"  # the export folder of the first artifact, not baseline/
    assert result.plot_path == run / "bench.png" and result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(result.json_path.read_text())
    assert rows == json.loads(json.dumps(result.rows))  # strict JSON of what was returned
    assert [(r["artifact"], r["batch"]) for r in rows] == [("baseline/model.onnx", 1), ("baseline/model.onnx", 4),
                                                           ("run-a/model.onnx", 1), ("run-a/model.onnx", 4)]
    for r in rows:
        assert {"path", "kind", "precision", "size_bytes", "environment", "cuda_graph", "gpu_compute"} <= set(r)
        assert r["kind"] == "onnx" and r["precision"] == "fp32" and r["cuda_graph"] is False
        ms = controlled[Path(r["path"]).parent.name] * r["batch"]
        assert r["p50_ms"] == pytest.approx(ms) and r["p99_ms"] == pytest.approx(ms)
        assert r["throughput_qps"] == pytest.approx(1e3 / ms) and r["throughput_ips"] == pytest.approx(1e3 / ms * r["batch"])
    assert "vs_baseline" not in rows[0]
    for r in rows[2:]:
        vs = r["vs_baseline"]
        assert vs["baseline"] == "baseline/model.onnx"
        assert vs["ratio_of_medians"] == pytest.approx(0.5) and vs["speedup"] == pytest.approx(2.0)
        assert vs["throughput_ratio"] == pytest.approx(2.0)
        assert vs["paired"]["ratio_median"] == pytest.approx(0.5) and vs["paired"]["iters"] == 4
    assert [(q["artifact"], q["batch"]) for q in result.ratios] == [("run-a/model.onnx", 1), ("run-a/model.onnx", 4)]
    table = bench_table(result.rows)
    assert table.columns[-1].header == "vs baseline/model.onnx" and table.row_count == 4


def test_compare_ratios_from_recorded_stats_and_unknown_baseline(tmp_path, controlled):
    rows = [{"artifact": a, "batch": b, "cuda_graph": g, **latency_stats(np.full(3, ms / 1e3), b)}
            for a, b, g, ms in (("fp32", 1, False, 4.0), ("int8", 1, False, 1.0), ("fp32", 1, True, 3.0),
                                ("int8", 8, False, 6.0))]
    ratios = compare_ratios(rows, "fp32")
    assert [(r["artifact"], r["cuda_graph"], r["ratio_of_medians"]) for r in ratios] == [
        ("int8", False, pytest.approx(0.25)), ("fp32", True, pytest.approx(0.75))]  # batch 8 has no baseline
    assert all(r["paired"] is None for r in ratios)
    with pytest.raises(ValueError, match="no measurement of the baseline"):
        compare_ratios(rows, "fp16")
    controlled.update({"a": 1.0})
    with pytest.raises(ValueError, match="names none of the benchmarked artifacts"):
        benchmark([_onnx_file(tmp_path / "a" / "model.onnx")], compare="nope.onnx", log=lambda _: None)


def test_bench_command_stays_backward_compatible(onnx_path, tmp_path):
    """The old invocation (positional artifacts, --batch-sizes/--min-iters/--min-time-s/--warmup-s/--threads/--json)
    still writes a JSON list of rows with the old keys; --compare adds the ratio table; a bad baseline exits 2."""
    from typer.testing import CliRunner

    target = tmp_path / "old.json"
    twin = _onnx_file(tmp_path / "twin" / "tiny.onnx")  # different input size: benchmarked at its own shape
    args = ["bench", str(onnx_path), "--batch-sizes", "1,2", "--min-iters", "3", "--min-time-s", "0",
            "--warmup-s", "0", "--threads", "1", "--json", str(target)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = json.loads(target.read_text())
    assert [r["batch"] for r in rows] == [1, 2] and target.with_suffix(".png").is_file()
    for r in rows:
        assert {"artifact", "runtime", "provider", "batch", "mean_ms", "median_ms", "p50_ms", "p90_ms", "p95_ms",
                "p99_ms", "std_ms", "throughput_ips", "environment"} <= set(r)
    res = CliRunner().invoke(app, args[:-2] + [str(twin), "--out", str(tmp_path / "o"), "--compare", str(onnx_path),
                                               "--paired-iters", "2"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "latency ratios vs" in res.output
    compared = json.loads((tmp_path / "o" / "bench.json").read_text())
    assert [r["vs_baseline"]["baseline"] for r in compared if "vs_baseline" in r] == [f"{onnx_path.parent.name}/tiny.onnx"] * 2
    res = CliRunner().invoke(app, args + ["--compare", "missing-label"])
    assert res.exit_code == 2 and "names none of the benchmarked artifacts" in res.stderr


@pytest.mark.gpu
def test_cuda_rows_have_gpu_compute_and_a_cuda_graph_twin():
    rows = bench(_model(), batch_sizes=(2,), input_shape=SHAPE, device="cuda", **FAST)
    assert [r["cuda_graph"] for r in rows] == [False, True]
    for r in rows:
        _check_result(r, 2)
        assert r["gpu_compute"]["median_ms"] > 0


@without_cuda
def test_cuda_graph_runners_refuse_the_cpu():
    from taslora_deploy.runners import torch_runner

    with pytest.raises(ValueError, match="needs a CUDA device"):
        torch_runner(_model(), 1, SHAPE, "cpu", cuda_graph=True)
    assert [r["cuda_graph"] for r in bench(_model(), batch_sizes=(1,), input_shape=SHAPE, **FAST)] == [False]
