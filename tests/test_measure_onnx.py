"""Measurement ONNX files assembled from exported parts (`taslora_deploy.measure_onnx`): the same graph as the
whole-model export (operators, every tensor's shape, the numbers), parts exported once and reused."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from taslora_core import SearchSpace, Supernet
from taslora_core.subnet import Subnet
from taslora_deploy import measure_onnx
from taslora_deploy.measure_onnx import assemble_onnx, part_keys
from taslora_deploy.onnx_export import export_onnx
from taslora_deploy.onnx_graph import op_histogram
from taslora_deploy.ort_parity import ort_session
from taslora_deploy.standalone.model import materialize

# every block a different shape, so each part comes from this very model and the numbers must match too
DISTINCT = Subnet(embed_dim=64, depth=4, mlp_ratios=[2.0, 3.0, 2.0, 3.0], num_heads=[2, 2, 3, 3])
# another depth and order, but every part (embed 64: stem, tail, the blocks' shapes) is one of DISTINCT's
OVERLAP = Subnet(embed_dim=64, depth=5, mlp_ratios=[2.0, 2.0, 3.0, 3.0, 3.0], num_heads=[2, 2, 3, 3, 2])


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    torch.manual_seed(0)
    model = Supernet(SearchSpace.preset("fmnist")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # no two biases alike: nothing is deduplicated by value
    return model


def _node_shapes(path) -> Counter:
    """(operator, shapes of its outputs) of every node, after shape inference; symbolic dims as '?'."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes = {v.name: tuple(d.dim_value if d.HasField("dim_value") else "?" for d in v.type.tensor_type.shape.dim)
              for v in [*g.value_info, *g.output]}
    return Counter((n.op_type, tuple(shapes.get(o) for o in n.output)) for n in g.node)


def test_assembled_graph_equals_the_whole_export(supernet, tmp_path):
    model = materialize(supernet, DISTINCT)
    whole = export_onnx(model, tmp_path / "whole.onnx", input_shape=model.input_shape)
    built = assemble_onnx(model, tmp_path / "built.onnx", tmp_path / "parts")
    assert op_histogram(built) == op_histogram(whole)
    assert _node_shapes(built) == _node_shapes(whole)
    floats = [sorted(tuple(i.dims) for i in onnx.load(str(p)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                     and len(i.dims) >= 1 and np.prod(i.dims) > 1) for p in (whole, built)]
    assert floats[0] == floats[1]  # every weight, same shape (scalars may be shared differently)
    x = np.random.default_rng(0).standard_normal((3, *model.input_shape)).astype(np.float32)
    got, want = (ort_session(p).run(None, {"images": x})[0] for p in (built, whole))
    assert np.abs(got - want).max() <= 1e-5
    info = onnx.load(str(built)).graph
    assert [i.name for i in info.input] == ["images"] and [o.name for o in info.output] == ["logits"]
    assert info.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_parts_are_exported_once_and_reused(supernet, tmp_path, monkeypatch):
    parts = tmp_path / "parts"
    exported = []
    real = measure_onnx.export_part
    monkeypatch.setattr(measure_onnx, "export_part", lambda *a, **k: exported.append(a[1]) or real(*a, **k))
    first = materialize(supernet, DISTINCT)
    assemble_onnx(first, tmp_path / "a.onnx", parts)
    assert len(exported) == 6 and len(set(part_keys(first))) == 6  # stem, 4 blocks, tail
    second = materialize(supernet, OVERLAP)
    assemble_onnx(second, tmp_path / "b.onnx", parts)
    assert len(exported) == 6  # nothing new to export
    assemble_onnx(second, tmp_path / "c.onnx", parts)
    assert len(exported) == 6 and (tmp_path / "b.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()
    # a block re-used at another position carries that block's weights: same graph, other numbers
    whole = export_onnx(second, tmp_path / "whole.onnx", input_shape=second.input_shape)
    assert op_histogram(tmp_path / "b.onnx") == op_histogram(whole)
    assert _node_shapes(tmp_path / "b.onnx") == _node_shapes(whole)
