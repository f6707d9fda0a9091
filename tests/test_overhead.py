"""Structural comparison and interleaved latency (no wall-clock bounds asserted)."""

from __future__ import annotations

import math
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tiny_vit import TinyViT
from taslora_deploy.onnx_export import export_onnx
from taslora_deploy.overhead import (
    OverheadError,
    assert_same_structure,
    interleaved_latency,
    ort_runner,
    structural_compare,
    torch_runner,
)

SHAPE = (3, 16, 16)


def _model(seed: int, extra_layer: bool = False, randomise_all: bool = False) -> TinyViT:
    torch.manual_seed(seed)
    m = TinyViT(extra_layer=extra_layer)
    if randomise_all:  # also LayerNorm weights, which are all-ones / zeros when fresh
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0.0, 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("overhead")
    a = export_onnx(_model(0), d / "a.onnx", input_shape=SHAPE)
    b = export_onnx(_model(1, randomise_all=True), d / "b_same_structure.onnx", input_shape=SHAPE)
    c = export_onnx(_model(0, extra_layer=True), d / "c_extra_layer.onnx", input_shape=SHAPE)
    return a, b, c


def test_same_structure_different_weights(onnx_files):
    a, b, _ = onnx_files
    rep = structural_compare(a, b)
    assert rep["equal"] is True, rep["differences"]
    assert rep["differences"] == []
    assert rep["op_histogram_a"] == rep["op_histogram_b"]
    assert rep["params_a"] == rep["params_b"] > 0
    # A's fresh LayerNorm weights are identical and get merged on export, B's random ones are not:
    # the stored counts differ but that is reported as a note, not a structural difference
    assert rep["stored_params_a"] < rep["stored_params_b"]
    assert rep["notes"] and rep["graph_macs_a"] == rep["graph_macs_b"] > 0
    assert assert_same_structure(a, b)["equal"] is True


def test_extra_layer_is_a_difference(onnx_files):
    a, _, c = onnx_files
    rep = structural_compare(a, c)
    assert rep["equal"] is False
    assert rep["params_b"] - rep["params_a"] == 32 * 32 + 32
    assert rep["op_histogram_b"]["MatMul"] > rep["op_histogram_a"]["MatMul"]
    assert any(d.startswith("op MatMul") for d in rep["differences"])
    assert any(d.startswith("parameter count") for d in rep["differences"])
    # the extra 32x32 linear layer on 16 tokens: 16 * 32 * 32 more multiply-accumulates, counted on the graph
    assert rep["graph_macs_b"] - rep["graph_macs_a"] == 16 * 32 * 32
    assert any(d.startswith("graph MACs") for d in rep["differences"]) and rep["digest_a"] != rep["digest_b"]
    with pytest.raises(OverheadError, match="differ structurally"):
        assert_same_structure(a, c)


def test_flops_are_compared(onnx_files):
    a, b, _ = onnx_files
    rep = structural_compare(a, b, flops_a=1.0e6, flops_b=1.0e6)
    assert rep["equal"] and rep["flops_a"] == rep["flops_b"] == 1.0e6
    rep = structural_compare(a, b, flops_a=1.0e6, flops_b=lambda path: 1.1e6)
    assert rep["flops_b"] == pytest.approx(1.1e6)
    assert not rep["equal"] and any(d.startswith("FLOPs") for d in rep["differences"])
    with pytest.raises(OverheadError):
        assert_same_structure(a, b, flops_a=1.0e6, flops_b=2.0e6)
    with pytest.raises(ValueError):
        structural_compare(a, b, flops_a=1.0e6)


def test_interleaved_latency_identical_runners():
    calls: list[str] = []
    x = np.random.default_rng(0).standard_normal((64, 64))

    def make(tag):
        def run():
            calls.append(tag)
            return x @ x

        return run

    iters = 20
    rep = interleaved_latency(make("a"), make("b"), warmup_s=0.02, iters=iters, inner=2)
    for key in ("median_a_ms", "median_b_ms", "ratio_median", "ratio_p10", "ratio_p90", "iqr_a_ms", "iqr_b_ms",
                "ratio_iqr", "ratio_of_medians", "iters", "inner", "warmup_pairs"):
        assert key in rep
    assert math.isfinite(rep["ratio_median"]) and rep["ratio_median"] > 0
    assert rep["median_a_ms"] > 0 and rep["median_b_ms"] > 0
    assert rep["iters"] == iters and rep["warmup_pairs"] >= 1
    # measured part: pairs alternate which side goes first (AB, BA, AB, ...), `inner` calls per sample
    measured = calls[-iters * 2 * 2:]
    firsts = [measured[i * 4] for i in range(iters)]
    assert firsts == ["a" if i % 2 == 0 else "b" for i in range(iters)]
    assert calls[: 2 * rep["warmup_pairs"]] == ["a", "b"] * rep["warmup_pairs"]
    assert len(calls) == 2 * rep["warmup_pairs"] + 2 * 2 * iters


def _exact(value: float):
    return pytest.approx(value, rel=1e-9)


def test_interleaved_latency_statistics_on_a_controlled_clock(monkeypatch):
    """A clock that moves only when a runner runs: A takes 2 ms per call, B's k-th call 2 ms * (1 + k / 10) (so
    the pair ratios B/A of the measured samples are known); every reported statistic has an exact value."""
    now = [0.0]
    b_costs: list[float] = []

    def run_a():
        now[0] += 2e-3

    def run_b():
        b_costs.append(2e-3 * (1 + len(b_costs) / 10))
        now[0] += b_costs[-1]

    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    iters = 10
    rep = interleaved_latency(run_a, run_b, warmup_s=0.0, iters=iters)
    b_ms = np.array(b_costs[-iters:]) * 1e3  # the measured samples are the last `iters` calls of B
    ratios = b_ms / 2.0
    assert rep["median_a_ms"] == _exact(2.0) and rep["iqr_a_ms"] == _exact(0.0)
    assert rep["median_b_ms"] == _exact(np.median(b_ms)) and rep["mean_b_ms"] == _exact(b_ms.mean())
    # the median of the per-pair ratios on the log scale (the certificate's statistic: for an even count, the
    # geometric mean of the middle two)
    assert rep["ratio_median"] == _exact(np.exp(np.median(np.log(ratios)))) and rep["ratio_median"] > 1.2  # B/A
    assert rep["ratio_p10"] == _exact(np.percentile(ratios, 10)) and rep["ratio_p90"] == _exact(np.percentile(ratios, 90))
    assert rep["ratio_iqr"] == _exact(np.percentile(ratios, 75) - np.percentile(ratios, 25))
    assert rep["ratio_of_medians"] == _exact(np.median(b_ms) / 2.0)


def test_runners_on_tiny_model(onnx_files):
    a, _, _ = onnx_files
    run_onnx = ort_runner(a, batch=3, input_shape=None, device="cpu", threads=1)
    assert run_onnx.provider == "CPUExecutionProvider"
    assert run_onnx.input_shape == SHAPE
    assert run_onnx()[0].shape == (3, 10)
    run_torch = torch_runner(_model(0), batch=3, input_shape=SHAPE, device="cpu")
    out = run_torch()
    assert tuple(out.shape) == (3, 10) and not out.requires_grad
    rep = interleaved_latency(run_onnx, run_torch, warmup_s=0.01, iters=4)
    assert math.isfinite(rep["ratio_median"]) and rep["ratio_median"] > 0


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="onnxruntime has its CUDA provider here; this covers machines without it")
def test_ort_runner_on_cuda_without_the_provider_is_a_clear_error(onnx_files):
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        ort_runner(onnx_files[0], batch=1, device="cuda")


@pytest.mark.gpu
def test_torch_runner_on_cuda_matches_cpu():
    model = _model(0)
    on_cpu = torch_runner(model, batch=3, input_shape=SHAPE, device="cpu")()
    run_cuda = torch_runner(_model(0), batch=3, input_shape=SHAPE, device="cuda")
    out = run_cuda()
    assert out.is_cuda and torch.allclose(out.cpu(), on_cpu, atol=1e-4)
    rep = interleaved_latency(run_cuda, run_cuda, warmup_s=0.01, iters=4)
    assert math.isfinite(rep["ratio_median"]) and rep["ratio_median"] > 0
