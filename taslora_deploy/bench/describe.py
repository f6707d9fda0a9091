"""What `taslora bench` says about each artifact: an unambiguous label, its kind, its precision and its size.

Labels are the shortest path suffix that no other benchmarked artifact shares, so two files named
``model.onnx`` read ``run-a/model.onnx`` and ``baseline/model.onnx``; folders (standalone PyTorch) end in ``/``.
Precision is read from the file, not its name, where the file tells:

* ONNX: ``int8 QDQ`` when the graph holds QuantizeLinear/DequantizeLinear, ``int8 QOperator`` for QLinear*/
  *Integer ops, else the dtype that holds most floating-point weight elements (``fp16``, ``fp32``), with
  ``+fp32`` appended when a half-precision graph keeps some weights in fp32 (e.g. LayerNorm);
* a standalone folder: the dtypes in the safetensors header;
* a TensorRT plan: the precision is not readable without TensorRT; the file name is used (``fp16``/``int8``
  in it), else ``unknown``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from taslora_core.artifact_read import read_safetensors_header
from taslora_deploy.artifacts import MODEL_CONFIG, MODEL_WEIGHTS
from taslora_deploy.onnx_graph import op_histogram

__all__ = ["ArtifactInfo", "ONNX_SUFFIXES", "TRT_SUFFIXES", "artifact_labels", "describe_artifact",
           "describe_artifacts", "onnx_precision"]

ONNX_SUFFIXES = {".onnx"}
TRT_SUFFIXES = {".plan", ".engine"}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_QOPERATOR_PREFIXES = ("QLinear", "com.microsoft::QLinear")
_INTEGER_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "com.microsoft::DynamicQuantizeMatMul"}
_SAFETENSORS_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64", "I8": "int8", "U8": "uint8"}


@dataclass(frozen=True)
class ArtifactInfo:
    """One benchmarked artifact as bench.json and the table describe it."""

    label: str  # shortest unique path suffix among the artifacts benchmarked together
    path: str
    kind: str  # "onnx", "tensorrt" or "torch" (a standalone model folder)
    precision: str  # "fp32", "fp16", "fp16+fp32", "int8 QDQ", ... (read from the file, see the module doc)
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def artifact_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The shortest path suffix of each path that no other path in ``paths`` ends with.

    Paths are compared absolute; a folder's label ends with ``/``; the same path given twice gets ``#2``.
    """
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    labels: list[str] = []
    for i, own in enumerate(parts):
        others = [q for j, q in enumerate(parts) if j != i and q != own]
        k = 1
        while k < len(own) and any(q[-k:] == own[-k:] for q in others):
            k += 1
        label = "/".join(own[-k:]).replace("//", "/")
        labels.append(label + "/" if Path(paths[i]).is_dir() else label)
    seen: Counter[str] = Counter()
    for i, label in enumerate(labels):
        seen[label] += 1
        if seen[label] > 1:
            labels[i] = f"{label}#{seen[label]}"
    return labels


def _onnx_weight_dtypes(path: Path) -> Counter[str]:
    """Floating-point initializer elements per dtype name ('fp32', 'fp16', ...)."""
    import onnx

    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16",
             onnx.TensorProto.DOUBLE: "fp64"}
    model = onnx.load(str(path), load_external_data=False)
    counts: Counter[str] = Counter()
    for t in model.graph.initializer:
        if t.data_type in names:
            counts[names[t.data_type]] += int(np.prod([int(d) for d in t.dims], dtype=np.int64)) if t.dims else 1
    return counts


def onnx_precision(path: str | os.PathLike) -> str:
    """The precision an ONNX file computes in, read from its graph (see the module docstring)."""
    path = Path(path)
    ops = op_histogram(path)
    if any(op in _QDQ_OPS for op in ops):
        return "int8 QDQ"
    if any(op.startswith(_QOPERATOR_PREFIXES) or op in _INTEGER_OPS for op in ops):
        return "int8 QOperator"
    dtypes = _onnx_weight_dtypes(path)
    if not dtypes:
        return "fp32"
    main = dtypes.most_common(1)[0][0]
    rest = sorted(d for d in dtypes if d != main)
    return "+".join([main, *rest])


def _safetensors_precision(path: Path) -> str:
    """The dtypes named in a safetensors header (most elements first), without reading the tensors."""
    header = read_safetensors_header(path, "model weights", "re-export it with `taslora export`")
    counts: Counter[str] = Counter()
    for name, entry in header.items():
        if name != "__metadata__":
            counts[_SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"].lower())] += int(
                np.prod(entry["shape"], dtype=np.int64)) if entry["shape"] else 1
    return "+".join(d for d, _ in counts.most_common()) or "unknown"


def _size(path: Path) -> int:
    if path.is_dir():
        return sum((path / n).stat().st_size for n in (MODEL_WEIGHTS, MODEL_CONFIG) if (path / n).is_file())
    return path.stat().st_size


def describe_artifact(path: str | os.PathLike, label: str) -> ArtifactInfo:
    """Kind, precision and size of one artifact path (a file or a standalone model folder)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        weights = path / MODEL_WEIGHTS
        kind, precision = "torch", _safetensors_precision(weights) if weights.is_file() else "unknown"
    elif suffix in ONNX_SUFFIXES:
        kind, precision = "onnx", onnx_precision(path)
    elif suffix in TRT_SUFFIXES:
        name = path.name.lower()
        kind, precision = "tensorrt", next((p for p in ("int8", "fp16", "fp32") if p in name), "unknown")
    else:
        kind, precision = "unknown", "unknown"
    return ArtifactInfo(label=label, path=str(path), kind=kind, precision=precision, size_bytes=_size(path))


def describe_artifacts(paths: Sequence[str | os.PathLike]) -> list[ArtifactInfo]:
    """:func:`describe_artifact` of each path under its unique label (:func:`artifact_labels`)."""
    return [describe_artifact(p, label) for p, label in zip(paths, artifact_labels(paths))]
