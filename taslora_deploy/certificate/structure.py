"""Structure facts of a deployable model and their comparison: the proof half of the zero-overhead certificate.

Facts of one artifact (a dict, JSON-serialisable, with a sha256 ``digest`` of the facts themselves):

- ``ops``: the operator multiset (ONNX: node op types over graph, subgraphs and functions; torch: the aten
  operators one forward pass at batch 1 dispatches);
- ``initializers``: ``[name, shape, dtype]`` of every stored tensor (ONNX initializers; torch state dict);
- ``io``: names, dtypes and dims of the inputs and outputs;
- ``params``: floating-point parameter elements (ONNX: counted once per node input that reads them, so
  initializers the exporter merged because they hold equal values do not count less);
- ``graph_macs``: multiply-accumulates of one image counted on the graph itself (ONNX: MatMul / Gemm / Conv after
  shape inference; torch: ``torch.utils.flop_counter.FlopCounterMode``), so an added or resized layer shows;
- ``flops_macs``: the search space's FLOPs counter for the subnet, when given.

:func:`compare_structures` lists every difference between two sets of facts; "identical" means none.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["json_digest", "onnx_structure", "torch_structure", "compare_structures"]

_DIGEST_EXCLUDES = ("digest", "path")


def json_digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _with_digest(facts: dict[str, Any]) -> dict[str, Any]:
    facts["digest"] = json_digest({k: v for k, v in facts.items() if k not in _DIGEST_EXCLUDES})
    return facts


def onnx_structure(path: str | os.PathLike, flops_macs: float | None = None) -> dict[str, Any]:
    """Structure facts of an ONNX file (see the module docstring), with their digest."""
    from taslora_deploy.onnx_graph import (graph_macs, initializer_param_count, initializer_table, io_signature,
                                           op_histogram, referenced_param_count, referenced_param_shapes)

    path = Path(path)
    macs = graph_macs(path)
    return _with_digest({
        "kind": "onnx", "path": str(path), "ops": op_histogram(path), "initializers": initializer_table(path),
        "io": io_signature(path), "params": referenced_param_count(path),
        "param_shapes": [list(s) for s in referenced_param_shapes(path)],
        "stored_params": initializer_param_count(path), "graph_macs": macs["macs"],
        "graph_macs_unknown": macs["unknown"], "flops_macs": None if flops_macs is None else float(flops_macs)})


def _aten_ops(module: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """The aten operators one forward pass dispatches, counted (a dispatch mode sees every call below autograd)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.counts: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
            self.counts[str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), _Count() as mode:
        module(x)
    return dict(sorted(mode.counts.items()))


def torch_structure(module: torch.nn.Module, input_shape: Sequence[int], flops_macs: float | None = None,
                    path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Structure facts of a torch model (one forward pass at batch 1 on the CPU copy's device), with their digest."""
    from torch.utils.flop_counter import FlopCounterMode

    module = module.eval()
    ref = next(module.parameters())
    x = torch.zeros((1, *(int(s) for s in input_shape)), device=ref.device, dtype=ref.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = module(x)
    state = module.state_dict()
    return _with_digest({
        "kind": "torch", "path": None if path is None else str(path), "ops": _aten_ops(module, x),
        "initializers": sorted([name, list(t.shape), str(t.dtype).replace("torch.", "")] for name, t in state.items()),
        "io": {"inputs": [{"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}],
               "outputs": [{"shape": list(out.shape), "dtype": str(out.dtype).replace("torch.", "")}]},
        "params": int(sum(p.numel() for p in module.parameters())),
        "param_shapes": sorted(list(p.shape) for p in module.parameters()),
        "stored_params": int(sum(t.numel() for t in state.values() if t.is_floating_point())),
        "graph_macs": int(counter.get_total_flops() // 2), "graph_macs_unknown": [],
        "flops_macs": None if flops_macs is None else float(flops_macs)})


def _multiset_difference(a: list, b: list) -> tuple[list, list]:
    ca, cb = Counter(json.dumps(x) for x in a), Counter(json.dumps(x) for x in b)
    return ([json.loads(x) for x in sorted((ca - cb).elements())], [json.loads(x) for x in sorted((cb - ca).elements())])


def compare_structures(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Every difference between the facts ``a`` and ``b`` (one line each, the sides called ``names``):
    ``{"identical", "differences", "notes"}``.

    Stored initializers that differ only where the parameter shapes read by the graph agree (the exporter merged
    initializers holding equal values, or named them differently) are a note, not a difference.
    """
    na, nb = names
    differences: list[str] = []
    notes: list[str] = []
    for op in sorted(set(a["ops"]) | set(b["ops"])):
        ca, cb = a["ops"].get(op, 0), b["ops"].get(op, 0)
        if ca != cb:
            differences.append(f"op {op}: {ca} in {na} vs {cb} in {nb}")
    if a["params"] != b["params"]:
        differences.append(f"parameter count: {a['params']} in {na} vs {b['params']} in {nb}")
    only_a, only_b = _multiset_difference(a["param_shapes"], b["param_shapes"])
    shapes_agree = not (only_a or only_b)
    if not shapes_agree:
        differences.append(f"parameter shapes: only in {na} {only_a[:8]}, only in {nb} {only_b[:8]}")
    if a["io"] != b["io"]:
        differences.append(f"graph I/O: {na} {a['io']} vs {nb} {b['io']}")
    if a["graph_macs"] != b["graph_macs"]:
        differences.append(f"graph MACs (batch 1): {a['graph_macs']} in {na} vs {b['graph_macs']} in {nb}")
    if a.get("flops_macs") != b.get("flops_macs"):
        differences.append(f"FLOPs: {a.get('flops_macs')} in {na} vs {b.get('flops_macs')} in {nb}")
    only_a, only_b = _multiset_difference(a["initializers"], b["initializers"])
    if only_a or only_b:
        line = f"stored initializers: only in {na} {only_a[:4]}, only in {nb} {only_b[:4]}"
        if shapes_agree:
            notes.append(f"{line} (the parameters the graph reads agree: the exporter merged initializers with "
                         "identical values or named them differently)")
        else:
            differences.append(line)
    if a["stored_params"] != b["stored_params"] and a["params"] == b["params"]:
        notes.append(f"stored initializer elements differ ({a['stored_params']} vs {b['stored_params']}) only because "
                     "the exporter merged initializers with identical values")
    return {"identical": not differences, "differences": differences, "notes": notes}
