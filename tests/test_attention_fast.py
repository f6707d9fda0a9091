"""The relative-position attention (`taslora_core.rel_pos_attention`) against AutoFormer's reference math.

`reference_attention` below is the implementation the library used before: it materialises the (N, N, head_dim)
key and value tables (table_v[idx_v] + table_h[idx_h]) and multiplies them per query, as AutoFormer's code
does. It stays here, and only here, as the oracle of the fast attention (benchmarks/bench_vs_timm.py loads it as
its "reference" attention). The loop-based oracle of the whole forward is tests/test_supernet.py.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from taslora_core import SearchSpace, Supernet, rel_pos_attention
from taslora_core.rel_pos_attention import PER_QUERY_MAX_TOKENS, RelPosBuffers, RelTables, attention, rel_pos_buffers
from taslora_core.subnet import largest_subnet, sample_subnet
from taslora_core.vit_ops import rel_pos_index
from taslora_deploy.standalone.model import materialize

TOL = 1e-5


def reference_attention(
    qkv: torch.Tensor, heads: int, head_dim: int, tables: RelTables | None, buffers: RelPosBuffers | None
) -> torch.Tensor:
    """The former library attention, same signature as `rel_pos_attention.attention`."""
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
    scale = head_dim**-0.5
    logits = q @ k.transpose(-2, -1)
    rel_k = rel_v = None
    if tables is not None:
        grid, max_rel = int(round((n - 1) ** 0.5)), tables.key_v.shape[0] // 2 - 1
        idx_v, idx_h = (i.to(qkv.device) for i in rel_pos_index(grid, max_rel))
        rel_k = tables.key_v[idx_v] + tables.key_h[idx_h]  # (N, N, d)
        rel_v = tables.value_v[idx_v] + tables.value_h[idx_h]
        qr = q.permute(2, 0, 1, 3).reshape(n, -1, head_dim) @ rel_k.transpose(1, 2)
        logits = logits + qr.reshape(n, b, heads, n).permute(1, 2, 0, 3)
    attn = (logits * scale).softmax(dim=-1)
    out = attn @ v
    if rel_v is not None:
        av = attn.permute(2, 0, 1, 3).reshape(n, -1, n) @ rel_v  # (N, B*h, d)
        out = out + av.reshape(n, b, heads, head_dim).permute(1, 2, 0, 3)
    return out.transpose(1, 2).reshape(b, n, heads * head_dim)


FORMS = ("bins", "per-query")


def _buffers(grid: int, max_rel: int, head_dim: int, form: str = "auto") -> RelPosBuffers:
    """The grid's buffers; form "bins" drops the per-query index, so even a small grid takes the bins form."""
    buffers = rel_pos_buffers(grid, max_rel, head_dim)
    if form == "bins":
        return buffers._replace(pair_index=buffers.pair_index[:, :0, :0])
    assert form == "auto" or buffers.pair_index.numel()  # per-query: only small grids have it
    return buffers


def _inputs(grid: int, max_rel: int, head_dim: int, heads: int, batch: int, seed: int = 0, requires_grad=False,
            form: str = "auto"):
    g = torch.Generator().manual_seed(seed)
    n, rows = grid * grid + 1, 2 * max_rel + 2
    qkv = torch.randn(batch, n, 3 * heads * head_dim, generator=g)
    tables = RelTables(*(torch.randn(rows, head_dim, generator=g) * 0.5 for _ in range(4)))
    if requires_grad:
        qkv.requires_grad_(True)
        for t in tables:
            t.requires_grad_(True)
    return qkv, tables, _buffers(grid, max_rel, head_dim, form)


# grid, max_rel, head_dim, heads, batch: fmnist (4x4, max_rel 3), autoformer (14x14, 14), clamping grids
# (max_rel < grid - 1, so distances beyond it share the edge rows), max_rel 0, a 1x1 grid, odd head dims.
SHAPES = [
    (4, 3, 32, 3, 2), (14, 14, 64, 4, 2), (14, 14, 64, 3, 1), (14, 5, 64, 4, 2), (4, 1, 32, 2, 3),
    (5, 2, 16, 2, 1), (7, 0, 8, 1, 2), (1, 1, 8, 2, 2), (2, 6, 12, 3, 2), (6, 3, 24, 5, 4),
]


def _cases(shapes):
    """(shape, form) pairs: every shape in the bins form, small grids also in the per-query form."""
    return [(shape, form) for shape in shapes for form in FORMS
            if form == "bins" or shape[0] ** 2 + 1 <= PER_QUERY_MAX_TOKENS]


def _case_id(case) -> str:
    return "grid{}-rel{}-d{}-h{}-b{}".format(*case[0]) + "-" + case[1]


def test_the_form_follows_the_grid_size():
    assert rel_pos_buffers(4, 3, 32).pair_index.shape == (2, 17, 17)  # fmnist: per query
    assert rel_pos_buffers(14, 14, 64).pair_index.numel() == 0  # 224 / 16: bins
    assert rel_pos_buffers(14, 14, 64).one_hot.shape == (197, 32)  # 2 * 14 + 4, and 64 + 32 = 96


@pytest.mark.parametrize("shape, form", _cases(SHAPES), ids=[_case_id(c) for c in _cases(SHAPES)])
def test_attention_equals_the_reference(shape, form):
    qkv, tables, buffers = _inputs(*shape, form=form)
    with torch.no_grad():
        got = attention(qkv, shape[3], shape[2], tables, buffers)
        want = reference_attention(qkv, shape[3], shape[2], tables, buffers)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOL


GRAD_CASES = _cases([(4, 3, 32, 3, 2), (14, 5, 64, 4, 2), (3, 0, 8, 2, 3)])


@pytest.mark.parametrize("shape, form", GRAD_CASES, ids=[_case_id(c) for c in GRAD_CASES])
def test_gradients_equal_the_reference(shape, form):
    """Training back-propagates through both forms: the gradients of qkv and of all four tables agree."""
    grads = []
    for fn in (attention, reference_attention):
        qkv, tables, buffers = _inputs(*shape, seed=3, requires_grad=True, form=form)
        out = fn(qkv, shape[3], shape[2], tables, buffers)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([qkv.grad, *(t.grad for t in tables)])
    for got, want in zip(*grads):
        assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], SHAPES[7]], ids=str)
def test_the_export_form_equals_the_reference(shape, monkeypatch):
    """Under ONNX export the fused kernel of the bins form is written as MatMul / Softmax: the same numbers."""
    qkv, tables, buffers = _inputs(*shape, form="bins")
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    with torch.no_grad():
        for t in (tables, None):
            got = attention(qkv, shape[3], shape[2], t, buffers)
            assert (got - reference_attention(qkv, shape[3], shape[2], t, buffers)).abs().max().item() <= TOL


def test_without_relative_positions_it_is_plain_attention():
    qkv, _, _ = _inputs(4, 3, 16, 2, 3)
    assert (attention(qkv, 2, 16, None, None) - reference_attention(qkv, 2, 16, None, None)).abs().max() <= TOL
    with pytest.raises(ValueError, match="rel_pos_buffers"):
        attention(qkv, 2, 16, _inputs(4, 3, 16, 2, 3)[1], None)


@pytest.mark.parametrize("form", FORMS)
def test_every_table_row_that_autoformer_uses_matters(form):
    """Both forms read each table row the reference reads (rows 1 and 2*max_rel + 1 only when clamping or
    reachable): changing a used row changes the output, changing an unused one does not."""
    grid, max_rel = 4, 1  # distances up to 3, clamped to 1: every row 0..3 is used
    qkv, tables, buffers = _inputs(grid, max_rel, 8, 2, 2, form=form)
    base = attention(qkv, 2, 8, tables, buffers)
    for t in range(4):
        for row in range(2 * max_rel + 2):
            bumped = [x.clone() for x in tables]
            bumped[t][row] += 1.0
            moved = attention(qkv, 2, 8, RelTables(*bumped), buffers)
            assert (moved - base).abs().max() > 1e-4, (t, row)
    qkv, tables, buffers = _inputs(3, 4, 8, 2, 2, form=form)  # grid 3: distances |d| <= 2, rows 1, 2, 8, 9 unused
    base = attention(qkv, 2, 8, tables, buffers)
    bumped = [x.clone() for x in tables]
    for x in bumped:
        x[[1, 2, 8, 9]] += 1.0
    assert torch.equal(attention(qkv, 2, 8, RelTables(*bumped), buffers), base)


def _space(name: str, **changes) -> SearchSpace:
    base = SearchSpace.preset(name)
    return SearchSpace(**{**{f: getattr(base, f) for f in base.__dataclass_fields__ if f != "extra"}, **changes})


def _randomised(space: SearchSpace, seed: int) -> Supernet:
    torch.manual_seed(seed)
    model = Supernet(space).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


SPACES = [
    ("fmnist", {}), ("fmnist-wide", {}), ("fmnist", {"max_relative_position": 1}),  # clamping fires
    ("fmnist", {"patch_size": 4}),  # a 7 x 7 grid: the bins form
    ("autoformer-t", {}), ("autoformer-t", {"max_relative_position": 5}),
]


@pytest.mark.parametrize("name, changes", SPACES, ids=[f"{n}{c}" for n, c in SPACES])
def test_logits_equal_the_reference_supernet_and_standalone(name, changes, monkeypatch):
    """Supernet (random subnet, the largest subnet) and standalone model: logits of the library's attention
    equal those of the reference attention within 1e-5, float32, batch > 1."""
    space = _space(name, **changes)
    sup = _randomised(space, seed=len(name))
    big = space.img_size > 32
    subnets = [largest_subnet(space)] + ([] if big else [sample_subnet(space, random.Random(1))])
    x = torch.randn(2 if big else 3, space.in_chans, space.img_size, space.img_size)
    with torch.no_grad():
        fast = [sup(x, s) for s in subnets] + [materialize(sup, subnets[0])(x)]
        monkeypatch.setattr(rel_pos_attention, "attention", reference_attention)
        slow = [sup(x, s) for s in subnets] + [materialize(sup, subnets[0])(x)]
    for got, want in zip(fast, slow):
        assert (got - want).abs().max().item() <= TOL


def test_the_constants_follow_the_module():
    space = SearchSpace.preset("fmnist")
    model = Supernet(space)
    assert {"rel_one_hot", "rel_key_index", "rel_value_index", "rel_pair_index"} <= dict(model.named_buffers()).keys()
    assert not any(k.startswith("rel_") for k in model.state_dict())  # not saved: derived from the space
    half = materialize(model, largest_subnet(space)).to(torch.float64)
    assert half.rel_one_hot.dtype == torch.float64 and half.rel_key_index.dtype == torch.long
    assert half(torch.randn(2, 1, 28, 28, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("patch", [7, 4], ids=["per-query", "bins"])
def test_bfloat16_autocast_keeps_one_dtype(patch):
    space = _space("fmnist", patch_size=patch)
    sup = _randomised(space, 0)
    x = torch.randn(2, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sup(x, largest_subnet(space))
    assert (low.float() - sup(x, largest_subnet(space))).abs().max() < 0.1


def test_onnx_graph_is_static_and_uses_plain_operators(tmp_path):
    """The exported fmnist model on a 7 x 7 grid (the bins form): onnxruntime parity, no scatter or
    data-dependent shape operators (the element gathers read constant, non-negative indices, which TensorRT's ONNX
    parser supports), and every tensor shape static except the batch."""
    from taslora_deploy.onnx_export import export_onnx, op_histogram
    from taslora_deploy.ort_parity import ort_session

    space = _space("fmnist", patch_size=4)
    model = materialize(_randomised(space, 2), largest_subnet(space))
    assert model.rel_pair_index.numel() == 0
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=model.input_shape)
    ops = op_histogram(path)
    banned = {"ScatterElements", "ScatterND", "Scatter", "GatherND", "NonZero", "Loop", "If"}
    assert not banned & ops.keys(), ops
    assert ops.get("GatherElements") == 2 * len(model.blocks), ops  # the key and the value side of each block
    model_proto = onnx.load(str(path))
    constants = {init.name for init in model_proto.graph.initializer}
    constants |= {out for node in model_proto.graph.node if node.op_type == "Constant" for out in node.output}
    produced = {out: node for node in model_proto.graph.node for out in node.output}
    for node in model_proto.graph.node:
        if node.op_type == "GatherElements":  # indices: a constant, at most expanded over the batch and heads
            source = produced.get(node.input[1])
            while source is not None and source.op_type in {"Expand", "Reshape", "Unsqueeze", "Cast", "Identity"}:
                if source.input[0] in constants:
                    break
                source = produced.get(source.input[0])
            assert source is None or source.input[0] in constants or source.op_type == "Constant", node.name
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    for info in [*graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        symbolic = [d.dim_param for d in dims if not d.HasField("dim_value")]
        assert len(symbolic) <= 1, (info.name, symbolic)  # at most the batch dim
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    got = ort_session(path).run(None, {"images": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("patch", [7, 4], ids=["per-query", "bins"])
def test_polygraphy_lint_passes_the_exported_graph(tmp_path, patch):
    """NVIDIA's Polygraphy (`polygraphy check lint`: ONNX checker, onnxruntime inference, graph lint) finds nothing
    to report in the exported graph of either attention form."""
    pytest.importorskip("polygraphy", reason="polygraphy is not installed: pip install -e '.[dev]'")
    pytest.importorskip("onnx_graphsurgeon", reason="onnx_graphsurgeon is not installed: pip install -e '.[dev]'")
    from taslora_deploy.onnx_export import export_onnx

    space = _space("fmnist", patch_size=patch)
    model = materialize(_randomised(space, 3), largest_subnet(space))
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=model.input_shape)
    report = tmp_path / "lint.json"
    cli = [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())"]
    res = subprocess.run([*cli, "check", "lint", str(path), "-o", str(report)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "POLYGRAPHY_AUTOINSTALL_DEPS": "0"})
    assert res.returncode == 0 and "PASSED" in res.stdout + res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
    lint = json.loads(report.read_text())
    assert lint["summary"]["passing"] and not lint["summary"]["failing"], lint["summary"]
    assert not [e for e in lint["lint_entries"] if e.get("level") == "exception"], lint["lint_entries"]
