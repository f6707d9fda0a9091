"""Export an image classifier to one ONNX file with a dynamic batch, and verify the file's properties.

Works on any ``torch.nn.Module`` that maps a float image batch ``(B, C, H, W)`` to logits ``(B, num_classes)``.
The exported file always has one input named ``images`` with a symbolic batch dimension and one output named
``logits``. Running the file (onnxruntime sessions, parity) lives in :mod:`taslora_deploy.ort_parity`, reading
facts from it (op histograms, parameter counts) in :mod:`taslora_deploy.onnx_graph`.

``onnx`` is imported lazily, so this module imports with torch alone.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from taslora_core.atomic import atomic_write
from taslora_deploy.devices import module_device_dtype
from taslora_deploy.errors import ExportError, ParityError, ProviderUnavailableError
from taslora_deploy.onnx_graph import (
    default_opset_version,
    dim_repr,
    initializer_param_count,
    onnx_input_info,
    op_histogram,
    referenced_param_count,
    referenced_param_shapes,
    value_info_dims,
)
from taslora_deploy.ort_parity import check_onnx_parity, ort_session

# The re-exported names (errors, sessions, parity, graph facts) keep `from taslora_deploy.onnx_export import ...`
# working for code written before the split.
__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "ParityError",
    "ProviderUnavailableError",
    "export_onnx",
    "export_part",
    "fold_constant_subgraphs",
    "stamp_metadata",
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


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int] = (3, 224, 224),
    opset: int = 18,
    dtype: torch.dtype = torch.float32,
    trace_batch: int = 2,
    fold_constants: bool = True,
) -> Path:
    """Export ``model`` to a single-file ONNX model at ``path`` and verify it.

    Uses the torch.export based exporter (``dynamo=True``) with a dynamic batch
    dimension.  After export the file is checked: symbolic batch dim on the input
    (and output), names ``images``/``logits``, no external data,
    ``onnx.checker.check_model(full_check=True)``, and the default-domain opset
    equal to ``opset``.  The file is written atomically
    (:func:`taslora_core.atomic.atomic_write`): on any failure nothing is left behind
    (an earlier file at ``path`` stays) and :class:`ExportError` is raised.

    ``fold_constants`` (default) folds every subgraph that depends only on weights into one initializer
    (:func:`fold_constant_subgraphs`), so the shipped graph is minimal.

    ``dtype=torch.float16`` exports a half-precision copy of the model (fp16 input
    and weights), e.g. for strongly typed TensorRT fp16 engines.  The caller's
    module is never modified (a deep copy is exported).
    """
    import onnx  # noqa: F401 - fail before the slow export when onnx is missing

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
    export_model = copy.deepcopy(model).eval()
    device, _ = module_device_dtype(export_model)
    export_model = export_model.to(dtype=dtype)
    example = torch.randn((trace_batch, *input_shape), device=device, dtype=torch.float32).to(dtype)
    _write_onnx(export_model, example, path, INPUT_NAME, OUTPUT_NAME, int(opset), fold_constants,
                lambda tmp: _verify_exported(tmp, opset=int(opset)))
    return path


def export_part(module: torch.nn.Module, path: str | os.PathLike, example: torch.Tensor, input_name: str,
                output_name: str, opset: int = 18) -> Path:
    """Export one piece of a model (e.g. one transformer block on tokens) exactly as :func:`export_onnx` exports
    whole models (same exporter, dynamic first dim, folding), with the given input and output names; the file is
    checked by ``onnx.checker`` and written atomically. ``example`` is a traced input with a first dim >= 2."""
    import onnx

    def check(tmp: Path) -> None:
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)

    _write_onnx(module.eval(), example, Path(path), input_name, output_name, int(opset), True, check)
    return Path(path)


def _write_onnx(export_model: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str,
                output_name: str, opset: int, fold_constants: bool, verify: Any) -> None:
    """torch.onnx.export (dynamo, dynamic first dim, one file), folding, then ``verify(tmp)``; atomic."""
    kwargs: dict[str, Any] = dict(
        dynamo=True,
        opset_version=int(opset),
        input_names=[input_name],
        output_names=[output_name],
        dynamic_shapes=({0: BATCH_DIM_NAME},),
        external_data=False,
        verbose=False,  # the dynamo exporter otherwise prints its progress on stdout
    )
    # torch <= 2.8 had a ``fallback`` keyword (retry with the TorchScript exporter);
    # torch 2.15 no longer has it and rejects unknown keywords.  Never fall back.
    if "fallback" in inspect.signature(torch.onnx.export).parameters:
        kwargs["fallback"] = False

    def write(tmp: Path) -> None:
        side_data = Path(f"{tmp}.data")  # where the exporter would put external data
        try:
            with torch.inference_mode(False), torch.no_grad():
                try:
                    torch.onnx.export(export_model, (example,), str(tmp), **kwargs)
                except Exception as exc:  # exporter errors are many different types
                    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
                    raise ExportError(f"torch.onnx.export (dynamo) failed: {type(exc).__name__}: {text}") from exc
            if not tmp.exists() or tmp.stat().st_size == 0:
                raise ExportError("torch.onnx.export did not write a model file")
            if side_data.exists():
                # its location inside the graph names the temporary file, so it could not follow the rename
                raise ExportError("exporter wrote external data although external_data=False was requested")
            if fold_constants:
                fold_constant_subgraphs(tmp)
            verify(tmp)
        finally:
            side_data.unlink(missing_ok=True)

    atomic_write(path, write)


def stamp_metadata(path: str | os.PathLike, props: dict[str, str], prefix: str = "taslora.") -> Path:
    """Rewrite the ONNX file at ``path`` (atomically) with ``props`` as its ``metadata_props``; earlier entries whose
    key starts with ``prefix`` are replaced, others kept. The graph is untouched."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(prefix)]
    del model.metadata_props[:]
    for key, value in [*kept, *sorted(props.items())]:
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))
    return path


FOLD_SIZE_LIMIT = 1 << 22
"""Largest constant (elements) the folding reads or writes. The exporter's own pass stops at 8192 input
elements, which leaves e.g. the relative-position tables of a fixed input size (17x17x32 per block) unfolded."""


def fold_constant_subgraphs(path: str | os.PathLike) -> None:
    """Fold, in place, every node whose inputs are all constants (onnxscript's optimizer, raised size limits),
    unless that makes the file bigger.

    Folding can grow a graph: at 224x224 each relative-position lookup (a small table gathered by a 197x197
    index) becomes a 197x197x64 constant, and autoformer-t's file grew from 31 MB to 289 MB. The raised limits
    are kept only when the folded model is no larger than the unfolded one; otherwise the optimizer's default
    limits (which leave such lookups in the graph) are used."""
    import onnx
    from onnxscript import optimizer

    model = onnx.load(str(path))
    unfolded_bytes = model.ByteSize()
    folded = optimizer.optimize(onnx.ModelProto.FromString(model.SerializeToString()),
                                input_size_limit=FOLD_SIZE_LIMIT, output_size_limit=FOLD_SIZE_LIMIT)
    if folded.ByteSize() > unfolded_bytes:
        folded = optimizer.optimize(model)
        if folded.ByteSize() > unfolded_bytes:  # the exporter's own pass already folded what pays
            return
    onnx.save(folded, str(path))


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

    in_dims = value_info_dims(inputs[0])
    if len(in_dims) != 4:
        raise ExportError(f"input {INPUT_NAME!r} has rank {len(in_dims)}, expected 4 (B, C, H, W)")
    b = in_dims[0]
    if not (b.HasField("dim_param") and b.dim_param):
        raise ExportError(
            f"batch dim of input {INPUT_NAME!r} is not symbolic (got {dim_repr(b)}): the exporter specialised it; "
            "check for batch-size dependent code (reshape with a literal batch, .item(), python ints from shapes)"
        )
    for d in in_dims[1:]:
        if not d.HasField("dim_value"):
            raise ExportError(f"input dims after batch must be static, got {[ dim_repr(x) for x in in_dims]}")
    out_dims = value_info_dims(graph.output[0])
    if out_dims and out_dims[0].HasField("dim_value"):
        raise ExportError(
            f"batch dim of output {OUTPUT_NAME!r} is static ({out_dims[0].dim_value}) while the input is dynamic"
        )

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker failed: {exc}") from exc

    got = default_opset_version(model)
    if got != opset:
        raise ExportError(f"exported default-domain opset is {got}, requested {opset}")
