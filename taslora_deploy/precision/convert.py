"""Reduced-precision twins of an fp32 ONNX export: fp16 (mixed, fp32 islands) and int8 (static QDQ).

Both read the verified fp32 ``model.onnx`` and write one new single-file ONNX atomically
(:func:`taslora_core.atomic.atomic_write`, so with the umask's permissions, 0644 under 022). Both keep the
graph's fp32 interface (input ``images``, output ``logits``), so every runner, parity check and accuracy gate
feeds them exactly as it feeds the fp32 model.

fp16 (:func:`convert_fp16`): every node computes in fp16 with fp16 weights, except

* ``LayerNormalization``: mean and variance over the embedding are sums of many squares; in fp16 they lose
  precision (10-bit mantissa) and can overflow (max 65504) on outlier channels;
* ``Softmax``: exp() of attention logits overflows fp16 beyond ~11, and its row sums lose the small terms;
* the classifier head (the nodes between the last LayerNormalization and the ``logits`` output: token pooling
  and the final Gemm/MatMul): it is tiny, and the accuracy gate compares logits, so they stay exact;
* ops whose attributes name a float type (Cast, ConstantOfShape, random generators, ...), which a dtype
  rewrite would make wrong.

Casts are inserted at every fp16/fp32 boundary, so the model is strongly typed as written: TensorRT builds
it as is (no FP16 builder flag, removed in TensorRT 11). onnxruntime's CPU provider runs it too: for a node
whose fp16 kernel it lacks it inserts fp32 Casts around that node itself (its InsertCastTransformer), so the
CPU result is a faithful (slower) check of the same graph; :func:`ort_cpu_fp32_fallbacks` names such ops.

int8 (:func:`quantize_int8`): onnxruntime's post-training static quantization in QDQ format
(QuantizeLinear/DequantizeLinear pairs around MatMul/Gemm/Conv inputs), per-channel symmetric int8 weights and
symmetric int8 activations (zero point 0: what TensorRT's explicit quantization requires), MinMax ranges
calibrated on the images given (the run's held-out validation split, never the test set). TensorRT consumes
the same QDQ file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from taslora_core.artifact_read import load_onnx_checked
from taslora_core.atomic import atomic_write

__all__ = ["FP32_OPS", "FP32_TYPED_OPS", "QUANTIZED_OPS", "convert_fp16", "quantize_int8", "fp16_kept_nodes",
           "ort_cpu_fp32_fallbacks", "CALIB_BATCH"]

FP32_SOURCE_FIX = "re-export the fp32 model with `taslora export --onnx`"
FP32_OPS = ("LayerNormalization", "Softmax")
"""Ops kept in fp32 for accuracy (see the module docstring)."""
FP32_TYPED_OPS = ("Cast", "CastLike", "ConstantOfShape", "RandomNormal", "RandomNormalLike", "RandomUniform",
                  "RandomUniformLike", "EyeLike", "Multinomial", "Bernoulli")
"""Ops with a float type in their attributes: converting them would need attribute rewrites; kept fp32."""
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
"""Ops quantized to int8 (the ones carrying the FLOPs); the rest stays fp32 between DequantizeLinear nodes."""
CALIB_BATCH = 32

_FLOAT = 1  # onnx.TensorProto.FLOAT
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16


# --------------------------------------------------------------------------- fp16


def fp16_kept_nodes(model) -> set[str]:
    """Names of the nodes of an ONNX ModelProto that :func:`convert_fp16` keeps in fp32.

    LayerNormalization, Softmax, float-typed ops, and the head: every node on a path from the last
    LayerNormalization to a graph output (pooling and the classifier)."""
    nodes = list(model.graph.node)
    keep = {n.name for n in nodes if n.op_type in FP32_OPS or n.op_type in FP32_TYPED_OPS}
    producer = {out: n for n in nodes for out in n.output}
    frontier = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        keep.add(node.name)
        if node.op_type != "LayerNormalization":
            frontier.extend(i for i in node.input if i)
    if any(n.op_type == "LayerNormalization" for n in nodes):
        return keep
    # no final norm to stop at: the walk would have claimed the whole graph; keep only the last node
    return {n.name for n in nodes if n.op_type in FP32_OPS or n.op_type in FP32_TYPED_OPS} | {nodes[-1].name}


def _float_tensors(model) -> set[str]:
    """Names of the fp32 tensors of a model (inferred types)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    out = {t.name for t in g.initializer if t.data_type == _FLOAT}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == _FLOAT:
            out.add(vi.name)
    for n in g.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None and value.data_type == _FLOAT:
                out.update(n.output)
    return out


def _to_fp16_model(model):
    """Rewrite a fp32 ModelProto in place to mixed fp16 (see the module docstring); returns it."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    for k, n in enumerate(g.node):  # the kept set is by name
        n.name = n.name or f"{n.op_type.lower()}_{k}"
    floats = _float_tensors(model)
    keep = fp16_kept_nodes(model)
    half_nodes = [n for n in g.node if n.name not in keep and n.op_type != "Constant"]
    # Constants feeding fp16 nodes become initializers, converted like the others below.
    for n in list(g.node):
        if n.op_type == "Constant" and n.output[0] in floats:
            value = next(a.t for a in n.attribute if a.name == "value")
            t = onnx.TensorProto()
            t.CopyFrom(value)
            t.name = n.output[0]
            g.initializer.append(t)
            g.node.remove(n)
    inits = {t.name: t for t in g.initializer}
    half_users: dict[str, int] = {}
    float_users: dict[str, int] = {}
    for n in g.node:
        users = float_users if n.name in keep else half_users
        for i in n.input:
            users[i] = users.get(i, 0) + 1

    half_names: set[str] = set()  # fp32 tensors that exist as fp16 after the rewrite
    for name, init in inits.items():
        if name in floats and name in half_users and name not in float_users:
            arr = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(arr, name))
            half_names.add(name)
    half_set = {n.name for n in half_nodes}
    for n in half_nodes:
        half_names.update(o for o in n.output if o in floats)

    new_nodes: list = []
    casts: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp16' if to == _FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to, name=f"cast_{casts[key]}"))
        return casts[key]

    for n in list(g.node):
        want_half = n.name in half_set
        for k, name in enumerate(n.input):
            if name not in floats:
                continue
            if want_half and name not in half_names:
                n.input[k] = cast(name, _FLOAT16)
            elif not want_half and name in half_names:
                n.input[k] = cast(name, _FLOAT)
        new_nodes.append(n)
    for out in g.output:
        if out.name in half_names:  # keep the fp32 interface: the fp16 producer writes a renamed tensor
            inner = f"{out.name}__fp16"
            for n in new_nodes:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if i == out.name else i for i in n.input]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=_FLOAT, name=f"cast_{out.name}"))
    del g.node[:]
    g.node.extend(_topological(new_nodes, {i.name for i in g.input} | set(inits)))
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _topological(nodes: list, available: set[str]) -> list:
    """Nodes in an order where every input is produced before use (casts were appended at the end)."""
    ready = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise ValueError(f"graph has a cycle or a dangling input near node {rest[0].name!r}")
        for n in done:
            ordered.append(n)
            ready.update(n.output)
        pending = rest
    return ordered


def convert_fp16(onnx_path: Path, out_path: Path) -> Path:
    """Write a mixed-precision fp16 copy of the fp32 ONNX model at `onnx_path` to `out_path` (atomically).

    fp16 weights and compute everywhere except LayerNormalization, Softmax and the classifier head (kept fp32,
    see the module docstring); fp32 input and output. The result passes ``onnx.checker`` (full check)."""
    import onnx

    model = _to_fp16_model(load_onnx_checked(onnx_path, "fp32 ONNX model", FP32_SOURCE_FIX))

    def write(tmp: Path) -> None:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)

    return atomic_write(out_path, write)


def ort_cpu_fp32_fallbacks(onnx_path: str | os.PathLike) -> dict[str, int]:
    """Op types of an fp16 model that onnxruntime's CPU provider runs in fp32 (it wraps them in Casts itself).

    Read from the session's optimised graph: the ops that read an fp16->fp32 Cast onnxruntime inserted."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    ours = {n.name for n in onnx.load(str(onnx_path)).graph.node}
    inserted = {o for n in optimized.graph.node if n.op_type == "Cast" and n.name not in ours
                and any(a.name == "to" and a.i == _FLOAT for a in n.attribute) for o in n.output}
    out: dict[str, int] = {}
    for n in optimized.graph.node:
        if n.op_type != "Cast" and any(i in inserted for i in n.input):
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- int8


class _ImageReader:
    """onnxruntime CalibrationDataReader over a tensor of images, in batches of CALIB_BATCH."""

    def __init__(self, input_name: str, images: torch.Tensor) -> None:
        self.input_name = input_name
        self.batches: Sequence[np.ndarray] = [b.float().cpu().numpy() for b in images.split(CALIB_BATCH)]
        self._it: Iterator[np.ndarray] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantize_int8(onnx_path: Path, calib_images: torch.Tensor, out_path: Path, per_channel: bool = True) -> Path:
    """Write a static int8 QDQ copy of the fp32 ONNX model at `onnx_path` to `out_path` (atomically).

    `calib_images` (N, C, H, W), normalised like the model's input, set the activation ranges (MinMax);
    weights are quantized per output channel when `per_channel`. See the module docstring for the scheme."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calib_images.ndim != 4 or len(calib_images) == 0:
        raise ValueError(f"calibration images must be a non-empty (N, C, H, W) batch, got shape {tuple(calib_images.shape)}")
    model = load_onnx_checked(onnx_path, "fp32 ONNX model", FP32_SOURCE_FIX)
    init_names = {t.name for t in model.graph.initializer}
    input_name = next(i.name for i in model.graph.input if i.name not in init_names)

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as work:
            # onnxruntime's recommended pre-pass, shape inference only: its graph optimisation would fold the
            # relative-position lookups into (tokens, tokens, head_dim) constants that quantize_static then stores
            # as int8 "weights" (autoformer-t at 224: a 72.5 MB int8 file from a 31.3 MB fp32 one). The export
            # already folded every constant that belongs in the graph.
            prepared = Path(work) / "prepared.onnx"
            quant_pre_process(model, prepared, skip_optimization=True)
            quantize_static(
                prepared, tmp, _ImageReader(input_name, calib_images), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS), per_channel=per_channel,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
        onnx.checker.check_model(str(tmp), full_check=True)

    return atomic_write(out_path, write)
