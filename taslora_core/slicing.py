"""The supernet's slicing rule, written once.

Every consumer (supernet forward for training and search, MoLE merging, folding into a standalone model,
parameter counting) takes its subnet tensors from here. The rule is AutoFormer's: keep the first N
rows/columns/channels, except the qkv weight whose rows are interleaved (q = rows 0,3,6,..., k = 1,4,...,
v = 2,5,...) while its bias is taken contiguously (`autoformer.md` section 2.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet

LINEAR_LAYERS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
"""The four linear layers of every block (the MoLE layers)."""

# Where each linear layer lives inside a block, in AutoFormer's (and our standalone's) parameter names.
LINEAR_PATHS: dict[str, str] = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "fc1", "fc2": "fc2"}

Deltas = Mapping[tuple[int, str], torch.Tensor]
"""Additive weight updates of already-sliced shape, keyed by (block index, layer name)."""


@dataclass(frozen=True)
class BlockDims:
    """The dims one block of a subnet uses."""

    embed: int
    heads: int
    head_dim: int
    hidden: int

    @property
    def qk(self) -> int:
        """Width of each of q, k and v (heads * head_dim)."""
        return self.heads * self.head_dim


def block_dims(space: SearchSpace, subnet: Subnet, block: int) -> BlockDims:
    """Dims of block `block` of `subnet`."""
    return BlockDims(subnet.embed_dim, subnet.num_heads[block], space.head_dim, subnet.hidden_dim(block))


def out_features(layer: str, d: BlockDims) -> int:
    """Output width of a linear layer in the subnet."""
    return {"qkv": 3 * d.qk, "proj": d.embed, "fc1": d.hidden, "fc2": d.embed}[layer]


def in_features(layer: str, d: BlockDims) -> int:
    """Input width of a linear layer in the subnet."""
    return {"qkv": d.embed, "proj": d.qk, "fc1": d.embed, "fc2": d.hidden}[layer]


def rows(layer: str, t: torch.Tensor, d: BlockDims) -> torch.Tensor:
    """Slice dim 0 (output features) of a supernet-sized tensor of a linear layer (weight, or LoRA U)."""
    n = out_features(layer, d)
    if layer != "qkv":
        return t[:n]
    # Interleaved rows: row 3j+c holds channel j of q (c=0), k (c=1) or v (c=2); stack as [q; k; v].
    return t[:n].reshape(d.qk, 3, *t.shape[1:]).transpose(0, 1).reshape(n, *t.shape[1:])


def cols(layer: str, t: torch.Tensor, d: BlockDims) -> torch.Tensor:
    """Slice the last dim (input features) of a supernet-sized tensor of a linear layer (weight, or LoRA D)."""
    return t[..., : in_features(layer, d)]


def weight(layer: str, w: torch.Tensor, d: BlockDims) -> torch.Tensor:
    """The subnet's weight of a linear layer."""
    return cols(layer, rows(layer, w, d), d)


def bias(layer: str, b: torch.Tensor, d: BlockDims) -> torch.Tensor:
    """The subnet's bias of a linear layer; contiguous for qkv too (AutoFormer's behaviour)."""
    return b[: out_features(layer, d)]


def first(t: torch.Tensor, n: int) -> torch.Tensor:
    """First n entries of the last dim (norms, cls/pos embeddings, head input columns)."""
    return t[..., :n]


def sliced_state(
    params: Mapping[str, torch.Tensor],
    space: SearchSpace,
    subnet: Subnet,
    deltas: Deltas | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors of `subnet` taken from supernet `params` (AutoFormer names), named as the standalone ViT's.

    `deltas[(b, layer)]`, already of the subnet's shape, is added to that layer's sliced weight (the folded
    LoRA experts). Autograd flows through the slices into `params` and `deltas`.
    """
    e = subnet.embed_dim
    out: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": params["patch_embed_super.proj.weight"][:e],
        "patch_embed.proj.bias": params["patch_embed_super.proj.bias"][:e],
        "cls_token": first(params["cls_token"], e),
    }
    if space.abs_pos:
        out["pos_embed"] = first(params["pos_embed"], e)
    for b in range(subnet.depth):
        d = block_dims(space, subnet, b)
        pre = f"blocks.{b}."
        for norm in ("attn_layer_norm", "ffn_layer_norm"):
            out[f"{pre}{norm}.weight"] = first(params[f"{pre}{norm}.weight"], e)
            out[f"{pre}{norm}.bias"] = first(params[f"{pre}{norm}.bias"], e)
        if space.relative_position:
            for kv in ("k", "v"):
                for axis in ("v", "h"):
                    name = f"{pre}attn.rel_pos_embed_{kv}.embeddings_table_{axis}"
                    out[name] = first(params[name], d.head_dim)
        for layer in LINEAR_LAYERS:
            path = pre + LINEAR_PATHS[layer]
            w = weight(layer, params[f"{path}.weight"], d)
            if deltas is not None and (b, layer) in deltas:
                w = w + deltas[(b, layer)]
            out[f"{path}.weight"] = w
            out[f"{path}.bias"] = bias(layer, params[f"{path}.bias"], d)
    out["norm.weight"] = first(params["norm.weight"], e)
    out["norm.bias"] = first(params["norm.bias"], e)
    out["head.weight"] = first(params["head.weight"], e)
    out["head.bias"] = params["head.bias"]
    return out
