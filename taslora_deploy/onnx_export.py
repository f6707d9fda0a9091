"""ONNX export of an image classifier, plus checker / onnxruntime parity helpers.

Works on any ``torch.nn.Module`` that maps a float image batch ``(B, C, H, W)`` to
logits ``(B, num_classes)``.  The exported file always has one input named
``images`` with a symbolic batch dimension and one output named ``logits``.

``onnx`` and ``onnxruntime`` are imported lazily so that this module can be
imported (e.g. for its exception classes) with torch alone.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "ParityError",
    "ProviderUnavailableError",
    "export_onnx",
    "ort_session",
    "check_onnx_parity",
    "op_histogram",
    "initializer_param_count",
    "referenced_param_count",
    "referenced_param_shapes",
    "onnx_input_info",
]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_DIM_NAME = "batch"


class ExportError(RuntimeError):
    """The exported ONNX file does not have the required properties."""


class ParityError(AssertionError):
    """Two runtimes disagree by more than the allowed tolerance."""


class ProviderUnavailableError(RuntimeError):
    """The requested onnxruntime execution provider is not active in the session."""


# --------------------------------------------------------------------------- helpers

_ONNX_TO_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


def _default_opset_version(model) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _dim_repr(dim) -> str:
    if dim.HasField("dim_value"):
        return str(dim.dim_value)
    if dim.HasField("dim_param"):
        return repr(dim.dim_param)
    return "?"


def _value_info_dims(vi) -> list:
    return list(vi.type.tensor_type.shape.dim)


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    for b in model.buffers():
        if b.is_floating_point():
            return b.device, b.dtype
    return torch.device("cpu"), torch.float32


def onnx_input_info(path: str | os.PathLike) -> tuple[str, tuple, Any]:
    """(input name, dims with None for symbolic, numpy dtype) of the single graph input."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise ExportError(f"{path}: expected exactly one graph input, found {[i.name for i in inputs]}")
    vi = inputs[0]
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in _value_info_dims(vi))
    elem = vi.type.tensor_type.elem_type
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    return vi.name, dims, np_dtype


# --------------------------------------------------------------------------- export


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int] = (3, 224, 224),
    opset: int = 18,
    dtype: torch.dtype = torch.float32,
    trace_batch: int = 2,
) -> Path:
    """Export ``model`` to a single-file ONNX model at ``path`` and verify it.

    Uses the torch.export based exporter (``dynamo=True``) with a dynamic batch
    dimension.  After export the file is checked: symbolic batch dim on the input
    (and output), names ``images``/``logits``, no external data,
    ``onnx.checker.check_model(full_check=True)``, and the default-domain opset
    equal to ``opset``.  On any failure the file is not left behind and
    :class:`ExportError` is raised.

    ``dtype=torch.float16`` exports a half-precision copy of the model (fp16 input
    and weights), e.g. for strongly typed TensorRT fp16 engines.  The caller's
    module is never modified (a deep copy is exported).
    """
    import onnx

    if trace_batch < 2:
        raise ValueError(
            "trace_batch must be >= 2: torch.export specialises a size-1 dim to a constant (0/1 specialisation)"
        )
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or any(s <= 0 for s in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"unsupported export dtype {dtype}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    export_model = copy.deepcopy(model).eval()
    device, _ = _model_device_dtype(export_model)
    export_model = export_model.to(dtype=dtype)
    example = torch.randn((trace_batch, *input_shape), device=device, dtype=torch.float32).to(dtype)

    kwargs: dict[str, Any] = dict(
        dynamo=True,
        opset_version=int(opset),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: BATCH_DIM_NAME},),
        external_data=False,
        verbose=False,  # the dynamo exporter otherwise prints its progress on stdout
    )
    # torch <= 2.8 had a ``fallback`` keyword (retry with the TorchScript exporter);
    # torch 2.15 no longer has it and rejects unknown keywords.  Never fall back.
    if "fallback" in inspect.signature(torch.onnx.export).parameters:
        kwargs["fallback"] = False

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.inference_mode(False), torch.no_grad():
            try:
                torch.onnx.export(export_model, (example,), str(tmp), **kwargs)
            except Exception as exc:  # exporter errors are many different types
                text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
                raise ExportError(f"torch.onnx.export (dynamo) failed: {type(exc).__name__}: {text}") from exc
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise ExportError("torch.onnx.export did not write a model file")
        for extra in (Path(str(tmp) + ".data"), tmp.with_suffix(tmp.suffix + ".data")):
            if extra.exists():
                extra.unlink()
                raise ExportError("exporter wrote external data although external_data=False was requested")
        _verify_exported(tmp, opset=int(opset))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _verify_exported(path: Path, opset: int) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph

    for init in graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"initializer {init.name!r} is stored as external data; expected a single file")

    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ExportError(f"expected one graph input named {INPUT_NAME!r}, got {[i.name for i in inputs]}")
    if [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ExportError(
            f"expected one graph output named {OUTPUT_NAME!r}, got {[o.name for o in graph.output]} "
            "(the model must return a single logits tensor)"
        )

    in_dims = _value_info_dims(inputs[0])
    if len(in_dims) != 4:
        raise ExportError(f"input {INPUT_NAME!r} has rank {len(in_dims)}, expected 4 (B, C, H, W)")
    b = in_dims[0]
    if not (b.HasField("dim_param") and b.dim_param):
        raise ExportError(
            f"batch dim of input {INPUT_NAME!r} is not symbolic (got {_dim_repr(b)}): the exporter specialised it; "
            "check for batch-size dependent code (reshape with a literal batch, .item(), python ints from shapes)"
        )
    for d in in_dims[1:]:
        if not d.HasField("dim_value"):
            raise ExportError(f"input dims after batch must be static, got {[ _dim_repr(x) for x in in_dims]}")
    out_dims = _value_info_dims(graph.output[0])
    if out_dims and out_dims[0].HasField("dim_value"):
        raise ExportError(
            f"batch dim of output {OUTPUT_NAME!r} is static ({out_dims[0].dim_value}) while the input is dynamic"
        )

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker failed: {exc}") from exc

    got = _default_opset_version(model)
    if got != opset:
        raise ExportError(f"exported default-domain opset is {got}, requested {opset}")


# --------------------------------------------------------------------------- onnxruntime


def _parse_device(device: str) -> tuple[str, int]:
    dev = str(device).lower()
    if dev == "cpu":
        return "cpu", 0
    if dev == "cuda" or dev.startswith("cuda:"):
        idx = int(dev.split(":", 1)[1]) if ":" in dev else 0
        return "cuda", idx
    raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")


def ort_session(
    path: str | os.PathLike,
    device: str = "cpu",
    threads: int | None = None,
    allow_spinning: bool = True,
):
    """Create an onnxruntime ``InferenceSession`` on ``device`` ('cpu' or 'cuda[:N]').

    The requested execution provider is verified with ``session.get_providers()``
    after creation: onnxruntime silently falls back to CPU when the CUDA provider
    cannot be loaded, which here raises :class:`ProviderUnavailableError` instead.
    ``threads`` sets ``intra_op_num_threads`` (and ``inter_op_num_threads=1``).
    ``allow_spinning=False`` stops idle worker threads from busy-waiting, which
    matters when several sessions (or torch) share few cores.
    """
    import onnxruntime as ort

    kind, idx = _parse_device(device)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if not allow_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")

    if kind == "cpu":
        wanted = "CPUExecutionProvider"
        providers: list = [wanted]
    else:
        wanted = "CUDAExecutionProvider"
        available = ort.get_available_providers()
        if wanted not in available:
            raise ProviderUnavailableError(
                f"device={device!r} needs onnxruntime's {wanted}, but this onnxruntime build only has {available}; "
                "install 'onnxruntime-gpu' (after uninstalling 'onnxruntime') on a CUDA machine"
            )
        providers = [(wanted, {"device_id": idx})]

    sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    active = sess.get_providers()
    if wanted not in active:
        raise ProviderUnavailableError(
            f"requested {wanted} for device={device!r} but the session runs on {active} "
            "(onnxruntime fell back silently; check CUDA/cuDNN libraries and the GPU driver)"
        )
    return sess


def _ort_input_dtype(sess) -> Any:
    t = sess.get_inputs()[0].type
    if t not in _ONNX_TO_NP:
        raise ExportError(f"unsupported ONNX input type {t}")
    return _ONNX_TO_NP[t]


def _as_batches(inputs: Any) -> list[torch.Tensor]:
    if inputs is None:
        return []
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return [torch.as_tensor(inputs)]
    return [torch.as_tensor(x) for x in inputs]


def check_onnx_parity(
    model: torch.nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 7),
    atol: float = 1e-4,
    inputs: Any = None,
    seed: int = 0,
) -> dict:
    """Compare ``model`` (torch, eval mode) with the ONNX file on onnxruntime CPU.

    Random normal batches of each size in ``batch_sizes`` are used (seeded), plus
    the given real ``inputs`` (a ``(N, C, H, W)`` tensor/array or a list of them).
    Returns ``{"atol", "max_abs_diff" (overall), "per_batch": {B: diff},
    "inputs": [diff, ...], "top1_agreement", "provider", "ok"}``; raises
    :class:`ParityError` (with all numbers) when any diff exceeds ``atol`` or an
    output is not finite / has the wrong shape.
    """
    input_shape = tuple(int(s) for s in input_shape)
    sess = ort_session(path, device="cpu")
    in_name = sess.get_inputs()[0].name
    np_dtype = _ort_input_dtype(sess)
    model = model.eval()
    device, mdtype = _model_device_dtype(model)

    gen = torch.Generator().manual_seed(int(seed))
    cases: list[tuple[Any, torch.Tensor]] = []
    for b in batch_sizes:
        cases.append((int(b), torch.randn((int(b), *input_shape), generator=gen)))
    for i, x in enumerate(_as_batches(inputs)):
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != input_shape:
            raise ValueError(f"inputs[{i}] has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, input_shape))})")
        cases.append((f"inputs[{i}]", x.float()))

    per_batch: dict[int, float] = {}
    real: list[float] = []
    problems: list[str] = []
    agree = total = 0
    for key, x in cases:
        with torch.inference_mode():
            ref = model(x.to(device=device, dtype=mdtype))
        if isinstance(ref, (tuple, list)):
            ref = ref[0]
        ref_np = ref.detach().float().cpu().numpy().astype(np.float64)
        got = sess.run(None, {in_name: x.numpy().astype(np_dtype)})[0].astype(np.float64)
        if got.shape != ref_np.shape:
            problems.append(f"{key}: onnx output shape {got.shape} != torch {ref_np.shape}")
            diff = float("inf")
        elif not (np.isfinite(got).all() and np.isfinite(ref_np).all()):
            problems.append(f"{key}: non-finite outputs")
            diff = float("inf")
        else:
            diff = float(np.max(np.abs(got - ref_np))) if got.size else 0.0
            if ref_np.ndim == 2 and ref_np.shape[1] > 0:
                agree += int((got.argmax(1) == ref_np.argmax(1)).sum())
                total += ref_np.shape[0]
        if isinstance(key, int):
            per_batch[key] = diff
        else:
            real.append(diff)
        if diff > atol:
            problems.append(f"{key}: max abs diff {diff:.3e} > atol {atol:.1e}")

    all_diffs = list(per_batch.values()) + real
    report = {
        "path": str(path),
        "atol": float(atol),
        "max_abs_diff": max(all_diffs) if all_diffs else 0.0,
        "per_batch": per_batch,
        "inputs": real,
        "top1_agreement": (agree / total) if total else None,
        "provider": sess.get_providers()[0],
        "ok": not problems,
    }
    if problems:
        raise ParityError(
            f"ONNX/torch parity failed for {path}: " + "; ".join(problems) + f" (per batch: {per_batch}, inputs: {real})"
        )
    return report


# --------------------------------------------------------------------------- structure


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

    model = onnx.load(str(path), load_external_data=False)
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
    import onnx

    return t.data_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
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
    """Number of floating-point initializer elements stored in the file.

    Integer initializers (shape / axes constants) are not parameters and are
    excluded.  Note that the torch exporter's optimiser deduplicates initializers
    with identical values (e.g. freshly initialised LayerNorm weights), so this
    can be lower than the torch parameter count; see :func:`referenced_param_count`.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(_numel(d) for d in _float_initializers(model).values())


def referenced_param_shapes(path: str | os.PathLike) -> list[tuple[int, ...]]:
    """Shapes of floating-point initializers, once per node input that reads them (sorted).

    Unlike the stored initializers this does not depend on whether the exporter
    merged initializers that happen to hold identical values.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
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
