"""Facts read from an ONNX file without running it: the graph input, op histograms, parameter counts, I/O, the
initializer table, multiply-accumulates counted on the graph, metadata_props.

``onnx`` is imported lazily, so this module imports with numpy alone.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from taslora_core.artifact_read import load_onnx_checked
from taslora_deploy.errors import ExportError

__all__ = ["onnx_input_info", "op_histogram", "initializer_param_count", "referenced_param_count",
           "referenced_param_shapes", "io_signature", "default_opset_version", "value_info_dims", "dim_repr",
           "initializer_table", "graph_macs", "onnx_metadata"]


def default_opset_version(model) -> int | None:
    """Opset of the default ONNX domain of a loaded model (None when absent)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def dim_repr(dim) -> str:
    """A graph dim as text: its size, its quoted symbol, or '?'."""
    if dim.HasField("dim_value"):
        return str(dim.dim_value)
    if dim.HasField("dim_param"):
        return repr(dim.dim_param)
    return "?"


def value_info_dims(vi) -> list:
    """The dims of a tensor value info."""
    return list(vi.type.tensor_type.shape.dim)


def onnx_input_info(path: str | os.PathLike) -> tuple[str, tuple, Any]:
    """(input name, dims with None for symbolic, numpy dtype) of the single graph input."""
    import onnx

    model = load_onnx_checked(path)
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise ExportError(f"{path}: expected exactly one graph input, found {[i.name for i in inputs]}")
    vi = inputs[0]
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in value_info_dims(vi))
    elem = vi.type.tensor_type.elem_type
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    return vi.name, dims, np_dtype


def _iter_graphs(graph):
    """The graph and all nested subgraphs (If/Loop/Scan bodies)."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_graphs(g)


def _op_key(node) -> str:
    if node.domain in ("", "ai.onnx"):
        return node.op_type
    return f"{node.domain}::{node.op_type}"


def op_histogram(path: str | os.PathLike) -> dict[str, int]:
    """Count of nodes per op type over the graph, its subgraphs and any model-local functions.

    Ops outside the default ONNX domain are keyed ``"domain::OpType"``.
    """
    import onnx

    model = load_onnx_checked(path)
    counts: Counter[str] = Counter()
    for g in _iter_graphs(model.graph):
        counts.update(_op_key(n) for n in g.node)
    for fn in model.functions:
        counts.update(_op_key(n) for n in fn.node)
        for n in fn.node:
            for attr in n.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    for g in _iter_graphs(attr.g):
                        counts.update(_op_key(x) for x in g.node)
    return dict(sorted(counts.items()))


def _is_float_tensor(t) -> bool:
    """A parameter tensor: floating point, or 8-bit (the weights and zero points of an int8 QDQ graph); the int64
    shape / axes constants are not parameters."""
    import onnx

    return t.data_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
    )


def _numel(dims) -> int:
    return int(np.prod([int(d) for d in dims], dtype=np.int64)) if len(dims) else 1


def _float_initializers(model) -> dict[str, tuple[int, ...]]:
    """name -> dims of every floating-point initializer (graph and subgraphs)."""
    out: dict[str, tuple[int, ...]] = {}
    for g in _iter_graphs(model.graph):
        for t in g.initializer:
            if _is_float_tensor(t):
                out[t.name] = tuple(int(d) for d in t.dims)
        for s in g.sparse_initializer:
            if _is_float_tensor(s.values):
                out[s.values.name] = tuple(int(d) for d in s.dims)
    return out


def initializer_param_count(path: str | os.PathLike) -> int:
    """Number of floating-point (and 8-bit quantized) initializer elements stored in the file.

    Wider integer initializers (shape / axes constants) are not parameters and are
    excluded.  Note that the torch exporter's optimiser deduplicates initializers
    with identical values (e.g. freshly initialised LayerNorm weights), so this
    can be lower than the torch parameter count; see :func:`referenced_param_count`.
    """
    model = load_onnx_checked(path)
    return sum(_numel(d) for d in _float_initializers(model).values())


def referenced_param_shapes(path: str | os.PathLike) -> list[tuple[int, ...]]:
    """Shapes of floating-point initializers, once per node input that reads them (sorted).

    Unlike the stored initializers this does not depend on whether the exporter
    merged initializers that happen to hold identical values.
    """
    model = load_onnx_checked(path)
    inits = _float_initializers(model)
    shapes: list[tuple[int, ...]] = []
    graphs = list(_iter_graphs(model.graph))
    for g in graphs:
        for n in g.node:
            shapes.extend(inits[name] for name in n.input if name in inits)
    outputs = {o.name for o in model.graph.output}
    shapes.extend(inits[name] for name in outputs if name in inits)
    return sorted(shapes)


def referenced_param_count(path: str | os.PathLike) -> int:
    """Floating-point initializer elements counted once per node input that reads them."""
    return sum(_numel(s) for s in referenced_param_shapes(path))


def io_signature(path: str | os.PathLike) -> dict[str, Any]:
    """Names, element types and dims of the graph inputs (initializers excluded) and outputs."""
    import onnx

    model = load_onnx_checked(path)
    init_names = {i.name for i in model.graph.initializer}

    def sig(vi):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        return {"name": vi.name, "dtype": onnx.TensorProto.DataType.Name(tt.elem_type), "shape": dims}

    return {
        "inputs": [sig(v) for v in model.graph.input if v.name not in init_names],
        "outputs": [sig(v) for v in model.graph.output],
    }


def initializer_table(path: str | os.PathLike) -> list[list[Any]]:
    """``[name, shape, dtype]`` of every stored initializer (graph and subgraphs), sorted by name."""
    import onnx

    model = load_onnx_checked(path)
    rows = []
    for g in _iter_graphs(model.graph):
        for t in g.initializer:
            rows.append([t.name, [int(d) for d in t.dims], onnx.TensorProto.DataType.Name(t.data_type)])
    return sorted(rows)


def _shape_map(model, batch: int) -> dict[str, list[int | None]]:
    """Every value's dims after shape inference with the graph inputs' symbolic batch dim fixed to ``batch``."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    init_names = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name not in init_names:
            dims = value_info_dims(vi)
            if dims and not dims[0].HasField("dim_value"):
                dims[0].dim_value = int(batch)
    del model.graph.value_info[:]  # recorded with the symbolic batch: infer them again from the fixed input
    for out in model.graph.output:
        for d in value_info_dims(out):
            if not d.HasField("dim_value"):
                d.Clear()
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int | None]] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in value_info_dims(vi)]
    for t in g.initializer:
        shapes[t.name] = [int(d) for d in t.dims]
    return shapes


def _prod(dims: list[int | None]) -> int | None:
    return None if any(d is None for d in dims) else int(np.prod(dims, dtype=np.int64)) if dims else 1


def _node_macs(node, shapes: dict[str, list[int | None]]) -> int | None:
    """Multiply-accumulates of one MatMul / Gemm / Conv node (None when a shape is unknown)."""
    out = shapes.get(node.output[0])
    if out is None or _prod(out) is None:
        return None
    if node.op_type == "MatMul":
        a = shapes.get(node.input[0])
        return None if not a or a[-1] is None else _prod(out) * int(a[-1])
    if node.op_type == "Gemm":
        a = shapes.get(node.input[0])
        trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
        k = None if not a else a[0 if trans_a else -1]
        return None if k is None else _prod(out) * int(k)
    w = shapes.get(node.input[1])  # Conv: every output element reads (C_in / groups) x kernel weights
    per = _prod(w[1:]) if w else None
    return None if per is None else _prod(out) * per


def graph_macs(path: str | os.PathLike, batch: int = 1) -> dict[str, Any]:
    """Multiply-accumulates of the graph's MatMul, Gemm and Conv nodes for one batch of ``batch`` images, read from
    the graph itself (shape inference), so an added or resized layer shows. ``{"macs", "counted", "unknown"}``:
    ``unknown`` lists the nodes whose shapes could not be inferred (then ``macs`` is a lower bound)."""
    model = load_onnx_checked(path)
    shapes = _shape_map(model, batch)
    total, counted, unknown = 0, 0, []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        macs = _node_macs(node, shapes)
        if macs is None:
            unknown.append(node.name or node.op_type)
        else:
            total += macs
            counted += 1
    return {"macs": int(total), "counted": counted, "unknown": unknown}


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in load_onnx_checked(path).metadata_props}
