"""ONNX files for latency measurement, assembled from exported parts instead of exported whole.

A latency fit or a latency-bounded search times dozens of subnets, and one `export_onnx` of a whole subnet costs
seconds (torch.export, decompositions, two optimizer passes) even for a 0.2 ms model. A subnet's graph is a chain:
the stem (patch embedding, cls token, positions: images -> tokens), one graph per block, and the tail (final norm,
pool, classifier: tokens -> logits). The graph of a part depends only on its shapes, so each distinct part (stem
and tail per embed dim, a block per (embed, heads, head dim, MLP hidden)) is exported once, by the same exporter
as `export_onnx` (`onnx_export.export_part`), and kept; a subnet's file is then those parts chained, in
milliseconds. The assembled graph has the same operators, the same tensor shapes and the same numbers as the
whole-model export when the parts come from the same model (tests/test_measure_onnx.py); a part re-used from
another subnet of the same shapes carries that subnet's weights, which changes no timing of a dense graph. These
files are for timing only: `taslora export` always exports the whole model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from taslora_core.atomic import atomic_write
from taslora_core.search.latency_model import space_hash
from taslora_core.vit import ModuleLayers, block_forward, rel_pos_of, vit_stem, vit_tail
from taslora_deploy.onnx_export import BATCH_DIM_NAME, INPUT_NAME, OUTPUT_NAME, export_part

__all__ = ["assemble_onnx", "part_keys"]

_TRACE_BATCH = 2
_TOKENS_IN, _TOKENS_OUT = "tokens_in", "tokens_out"


class _Stem(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vit_stem(x, ModuleLayers(self.model), self.model.space)


class _Block(nn.Module):
    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        self.model, self.index = model, index

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        space = self.model.space
        rel = rel_pos_of(self.model) if space.relative_position else None
        layers = ModuleLayers(self.model).block(self.index)
        return block_forward(h, layers, self.model.block_dims[self.index], rel)


class _Tail(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.head(vit_tail(h, ModuleLayers(self.model), self.model.space))


def part_keys(model: nn.Module) -> list[str]:
    """The cache key of each part of the standalone ViT `model` (stem, blocks, tail), in graph order: what its
    graph depends on (torch version, the space, the part's shapes, the dtype)."""
    space, dtype = model.space, next(model.parameters()).dtype
    base = f"{torch.__version__}|{space_hash(space)}|{dtype}|"
    embed = model.head.in_features
    keys = [f"{base}stem|{embed}"]
    keys += [f"{base}block|{d!r}" for d in model.block_dims]
    keys.append(f"{base}tail|{embed}|{model.head.out_features}")
    return keys


def _part_file(parts_dir: Path, key: str) -> Path:
    return parts_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"


def _export_parts(model: nn.Module, parts_dir: Path, opset: int) -> list[Path]:
    """The part files of `model`, exporting those not yet in `parts_dir`."""
    keys = part_keys(model)
    files = [_part_file(parts_dir, k) for k in keys]
    missing = [i for i, f in enumerate(files) if not f.is_file()]
    if not missing:
        return files
    parts_dir.mkdir(parents=True, exist_ok=True)
    space = model.space
    with torch.no_grad():
        x = torch.randn(_TRACE_BATCH, space.in_chans, space.img_size, space.img_size,
                        dtype=next(model.parameters()).dtype)
        tokens = _Stem(model)(x)
    last = len(files) - 1
    for i in missing:
        if i == 0:
            export_part(_Stem(model), files[i], x, INPUT_NAME, _TOKENS_OUT, opset)
        elif i == last:
            export_part(_Tail(model), files[i], tokens, _TOKENS_IN, OUTPUT_NAME, opset)
        else:
            export_part(_Block(model, i - 1), files[i], tokens, _TOKENS_IN, _TOKENS_OUT, opset)
    return files


def _chain(parts: Sequence["onnx.ModelProto"]) -> "onnx.ModelProto":  # noqa: F821
    """One graph of `parts` run in sequence (each part's one output feeds the next part's one input), every other
    name prefixed with its part's index, so parts with the same names (the same file twice) do not collide."""
    import onnx
    from onnx import helper

    nodes, inits, infos = [], [], []
    feed = INPUT_NAME
    for i, part in enumerate(parts):
        g = part.graph
        rename = {g.input[0].name: feed}
        out = g.output[0].name
        rename[out] = OUTPUT_NAME if i == len(parts) - 1 else f"p{i}/{out}"

        def new(name: str, i: int = i) -> str:
            return rename.get(name, f"p{i}/{name}") if name else name

        for init in g.initializer:
            copy_ = onnx.TensorProto()
            copy_.CopyFrom(init)
            copy_.name = new(init.name)
            inits.append(copy_)
        for info in g.value_info:  # the exporter's shapes of intermediate tensors, as a whole export has them
            copy_v = onnx.ValueInfoProto()
            copy_v.CopyFrom(info)
            copy_v.name = new(info.name)
            infos.append(copy_v)
        for node in g.node:
            copy_n = onnx.NodeProto()
            copy_n.CopyFrom(node)
            copy_n.name = f"p{i}/{node.name}"
            copy_n.input[:] = [new(n) for n in node.input]
            copy_n.output[:] = [new(n) for n in node.output]
            nodes.append(copy_n)
        feed = rename[out]
    first, last = parts[0].graph, parts[-1].graph
    graph_in, graph_out = onnx.ValueInfoProto(), onnx.ValueInfoProto()
    graph_in.CopyFrom(first.input[0])
    graph_out.CopyFrom(last.output[0])
    graph_in.name, graph_out.name = INPUT_NAME, OUTPUT_NAME
    graph = helper.make_graph(nodes, "taslora-measure", [graph_in], [graph_out], inits, value_info=infos)
    model = helper.make_model(graph, opset_imports=list(parts[0].opset_import))
    model.ir_version = parts[0].ir_version
    return model


def assemble_onnx(model: nn.Module, path: str | os.PathLike, parts_dir: str | os.PathLike, opset: int = 18) -> Path:
    """Write, atomically, the ONNX file of the standalone ViT `model` (dynamic batch, input ``images``, output
    ``logits``) chained from its parts, exporting into `parts_dir` the parts not already there (module
    docstring). The file passes ``onnx.checker``."""
    import onnx

    files = _export_parts(model, Path(parts_dir), opset)
    loaded = {f: onnx.load(str(f)) for f in set(files)}  # a block shape used twice is read once
    chained = _chain([loaded[f] for f in files])
    onnx.checker.check_model(chained, full_check=True)
    dims = chained.graph.input[0].type.tensor_type.shape.dim
    if not dims or dims[0].dim_param != BATCH_DIM_NAME:
        raise ValueError("the assembled graph lost its dynamic batch dim")
    path = Path(path)
    atomic_write(path, lambda tmp: onnx.save(chained, str(tmp)))
    return path
