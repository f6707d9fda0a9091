"""ONNX export, checker, opset, onnxruntime parity and structure helpers on a tiny ViT."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import pytest
import torch

from conftest import without_cuda
from tiny_vit import TinyViT
from taslora_deploy.onnx_export import (
    ExportError,
    ParityError,
    ProviderUnavailableError,
    check_onnx_parity,
    export_onnx,
    initializer_param_count,
    onnx_input_info,
    op_histogram,
    ort_session,
    referenced_param_count,
)

SHAPE = (3, 16, 16)




class FixedBatchViT(TinyViT):
    """Hard-codes the traced batch size of 2, so the exporter must specialise the batch dim."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(2, *SHAPE))


def _model(seed: int = 0) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT().eval()


@pytest.fixture(scope="module")
def model() -> TinyViT:
    return _model(0)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", input_shape=SHAPE, opset=18)


def test_export_symbolic_batch_opset_checker(exported):
    m = onnx.load(str(exported))
    assert [i.name for i in m.graph.input] == ["images"]
    assert [o.name for o in m.graph.output] == ["logits"]
    batch = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.HasField("dim_param") and batch.dim_param and not batch.HasField("dim_value")
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]] == list(SHAPE)
    assert {(o.domain or "ai.onnx"): o.version for o in m.opset_import}["ai.onnx"] == 18
    onnx.checker.check_model(str(exported), full_check=True)
    # single file: no external data
    assert not list(exported.parent.glob("*.data"))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    name, dims, dtype = onnx_input_info(exported)
    assert (name, dims, dtype) == ("images", (None, *SHAPE), np.dtype(np.float32))


def test_export_other_opset_and_fp16(model, tmp_path):
    p20 = export_onnx(model, tmp_path / "o20.onnx", input_shape=SHAPE, opset=20)
    assert {(o.domain or "ai.onnx"): o.version for o in onnx.load(str(p20)).opset_import}["ai.onnx"] == 20
    p16 = export_onnx(model, tmp_path / "half.onnx", input_shape=SHAPE, dtype=torch.float16)
    assert onnx_input_info(p16)[2] == np.dtype(np.float16)
    # the caller's module is left in fp32
    assert next(model.parameters()).dtype == torch.float32
    # fp16 model still runs in onnxruntime and roughly matches fp32 torch
    sess = ort_session(p16)
    x = torch.randn(3, *SHAPE)
    got = sess.run(None, {"images": x.numpy().astype(np.float16)})[0].astype(np.float32)
    with torch.inference_mode():
        ref = model(x).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 5e-2


def test_export_rejects_batch_specialising_model(tmp_path):
    torch.manual_seed(0)
    target = tmp_path / "fixed.onnx"
    with pytest.raises(ExportError, match=r"static shape|not symbolic"):
        export_onnx(FixedBatchViT().eval(), target, input_shape=SHAPE)
    assert not target.exists()
    assert not list(tmp_path.iterdir())  # temp file cleaned up as well


def test_export_rejects_static_batch_in_file(model, tmp_path, monkeypatch):
    """If the exporter ever writes a static batch dim, the post-export check must catch it."""
    real_export = torch.onnx.export

    def export_without_dynamic_shapes(*args, **kwargs):
        kwargs.pop("dynamic_shapes")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export_without_dynamic_shapes)
    target = tmp_path / "static.onnx"
    with pytest.raises(ExportError, match="not symbolic"):
        export_onnx(model, target, input_shape=SHAPE)
    assert not target.exists()
    assert not list(tmp_path.iterdir())


def test_export_rejects_trace_batch_one(model, tmp_path):
    with pytest.raises(ValueError, match="trace_batch"):
        export_onnx(model, tmp_path / "x.onnx", input_shape=SHAPE, trace_batch=1)


def test_ort_parity_batches_and_real_inputs(model, exported):
    real = torch.rand(5, *SHAPE)
    rep = check_onnx_parity(model, exported, SHAPE, batch_sizes=(1, 7), atol=1e-4, inputs=real)
    assert set(rep["per_batch"]) == {1, 7}
    assert len(rep["inputs"]) == 1
    assert all(0.0 <= d <= 1e-4 for d in [*rep["per_batch"].values(), *rep["inputs"]])
    assert rep["max_abs_diff"] == max([*rep["per_batch"].values(), *rep["inputs"]])
    assert rep["provider"] == "CPUExecutionProvider"
    assert rep["ok"] is True


def test_perturbed_model_fails_parity(model, exported):
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.head.bias.add_(0.05)
    with pytest.raises(ParityError) as info:
        check_onnx_parity(bad, exported, SHAPE, batch_sizes=(1, 7), atol=1e-4)
    msg = str(info.value)
    assert "max abs diff" in msg and "5.000e-02" in msg


@without_cuda
def test_ort_session_cuda_is_a_clear_error_here(exported):
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        ort_session(exported, device="cuda")


@without_cuda
def test_ort_session_detects_silent_cpu_fallback(exported, monkeypatch):
    """onnxruntime silently runs on CPU when the CUDA EP cannot load; that must raise."""
    import onnxruntime as ort

    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's own "not in available provider names" warning
        with pytest.raises(ProviderUnavailableError, match="fell back"):
            ort_session(exported, device="cuda")


def test_ort_session_threads(exported):
    sess = ort_session(exported, device="cpu", threads=1)
    assert sess.get_providers()[0] == "CPUExecutionProvider"
    with pytest.raises(ValueError):
        ort_session(exported, device="tpu")


def test_op_histogram_and_param_count(model, exported):
    hist = op_histogram(exported)
    assert hist["Conv"] == 1
    assert hist["Softmax"] == 1
    assert hist["LayerNormalization"] == 3
    assert sum(v for k, v in hist.items() if k in ("MatMul", "Gemm", "Einsum")) >= 6
    n_torch = sum(p.numel() for p in model.parameters())
    # exported parameters = torch parameters + a few float scalars (attention scale, GELU constants)
    assert 0 <= referenced_param_count(exported) - n_torch < 16
    # identical freshly-initialised LayerNorm weights get merged by the exporter's optimiser
    assert initializer_param_count(exported) <= referenced_param_count(exported)
