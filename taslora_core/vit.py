"""The ViT written once: its layers (AutoFormer's parameter names) and its forward, for supernet and standalone.

The layer classes (`PatchEmbed`, `Attention`, `Block`) only hold parameters: the supernet allocates them at
super size, the standalone ViT at one subnet's size, so both have the same names and state-dict order.
`vit_features` / `block_forward` are the one forward pass (pre-norm blocks, attention with 2-D relative
positions on keys and values, exact GELU, drop-path). They read every layer through a `Layers` source:

- `SlicedLayers`: tensors from `slicing.sliced_state` (the supernet: a subnet's slices, LoRA deltas folded in);
- `ModuleLayers`: a module's own layers, called as modules (the standalone ViT, so that a layer swapped for a
  wrapper, such as the run-time LoRA branches of `taslora_deploy.fold`, runs as the wrapper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Protocol

import torch
import torch.nn.functional as F
from timm.layers import drop_path
from torch import nn

from taslora_core import rel_pos_attention, vit_ops
from taslora_core.rel_pos_attention import RelPosBuffers, RelTables
from taslora_core.slicing import BlockDims
from taslora_core.space import SearchSpace


# ---------------------------------------------------------------------- layers (parameters only)
class PatchEmbed(nn.Module):
    """The patch-embedding convolution (`proj`)."""

    def __init__(self, in_chans: int, embed: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed, patch_size, patch_size)


class RelPosTables(nn.Module):
    """AutoFormer's pair of relative-position tables (rows and columns) of one attention side (k or v)."""

    def __init__(self, rows: int, cols: int) -> None:
        super().__init__()
        self.embeddings_table_v = nn.Parameter(torch.zeros(rows, cols))
        self.embeddings_table_h = nn.Parameter(torch.zeros(rows, cols))


class Attention(nn.Module):
    """Fused qkv (q, k and v each `qk` wide), optional relative-position tables of shape `rel_table`, proj."""

    def __init__(self, embed: int, qk: int, rel_table: tuple[int, int] | None) -> None:
        super().__init__()
        self.qkv = nn.Linear(embed, 3 * qk)
        if rel_table is not None:
            self.rel_pos_embed_k = RelPosTables(*rel_table)
            self.rel_pos_embed_v = RelPosTables(*rel_table)
        self.proj = nn.Linear(qk, embed)


class Block(nn.Module):
    """Parameters of one pre-norm transformer block; `block_forward` runs it."""

    def __init__(self, embed: int, qk: int, hidden: int, rel_table: tuple[int, int] | None) -> None:
        super().__init__()
        self.attn = Attention(embed, qk, rel_table)
        self.attn_layer_norm = nn.LayerNorm(embed, eps=vit_ops.LN_EPS)
        self.ffn_layer_norm = nn.LayerNorm(embed, eps=vit_ops.LN_EPS)
        self.fc1 = nn.Linear(embed, hidden)
        self.fc2 = nn.Linear(hidden, embed)


def register_rel_pos(module: nn.Module, space: SearchSpace) -> None:
    """Register the relative-position constants of the space's grid (`rel_pos_attention.rel_pos_buffers`) as
    non-persistent buffers `rel_one_hot`, `rel_key_index`, `rel_value_index`, `rel_pair_index` (they follow the module's device
    and dtype)."""
    buffers = rel_pos_attention.rel_pos_buffers(
        space.img_size // space.patch_size, space.max_relative_position, space.head_dim
    )
    for name, tensor in buffers._asdict().items():
        module.register_buffer(f"rel_{name}", tensor, persistent=False)


def rel_pos_of(module: nn.Module) -> RelPosBuffers:
    """The buffers `register_rel_pos` registered on `module`."""
    return RelPosBuffers(*(getattr(module, f"rel_{name}") for name in RelPosBuffers._fields))


# ---------------------------------------------------------------------- where the forward reads its layers
class Layers(Protocol):
    """A source of layers, addressed by the standalone ViT's parameter paths (e.g. "attn.qkv", "norm")."""

    def linear(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """Apply the linear layer at `path` to x."""

    def layer_norm(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """Apply the LayerNorm at `path` to x."""

    def conv(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """Apply the (patch-embedding) convolution at `path` to x."""

    def tensor(self, name: str) -> torch.Tensor:
        """The parameter called `name` (cls/pos embeddings, relative-position tables)."""

    def block(self, index: int) -> "Layers":
        """The layers of block `index`, addressed relative to the block."""


class SlicedLayers:
    """Layers computed functionally from a subnet's sliced tensors (`slicing.sliced_state` names)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], embed: int, patch_size: int, prefix: str = "") -> None:
        self.tensors, self.embed, self.patch_size, self.prefix = tensors, embed, patch_size, prefix

    def tensor(self, name: str) -> torch.Tensor:
        return self.tensors[self.prefix + name]

    def linear(self, path: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.tensor(path + ".weight"), self.tensor(path + ".bias"))

    def layer_norm(self, path: str, x: torch.Tensor) -> torch.Tensor:
        w, b = self.tensor(path + ".weight"), self.tensor(path + ".bias")
        return F.layer_norm(x, (self.embed,), w, b, vit_ops.LN_EPS)

    def conv(self, path: str, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.tensor(path + ".weight"), self.tensor(path + ".bias"), stride=self.patch_size)

    def block(self, index: int) -> "SlicedLayers":
        return SlicedLayers(self.tensors, self.embed, self.patch_size, f"{self.prefix}blocks.{index}.")


class ModuleLayers:
    """A module's own layers, each called as a module (so ONNX export sees ordinary Linear/LayerNorm/Conv)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def tensor(self, name: str) -> torch.Tensor:
        # attrgetter walks the dotted path in C: this runs on every forward of the deployed model.
        return attrgetter(name)(self.module)

    def linear(self, path: str, x: torch.Tensor) -> torch.Tensor:
        return attrgetter(path)(self.module)(x)

    layer_norm = conv = linear

    def block(self, index: int) -> "ModuleLayers":
        return ModuleLayers(self.module.blocks[index])


# ---------------------------------------------------------------------- the forward
def block_forward(
    x: torch.Tensor,
    layers: Layers,
    dims: BlockDims,
    rel: RelPosBuffers | None,
    drop_rate: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """One pre-norm block on tokens (B, N, E): x + attn(LN(x)), then + fc2(GELU(fc1(LN(x)))), each drop-pathed.

    `rel` (the grid's relative-position buffers) is None without relative positions. Drop-path acts only when
    `training` and `drop_rate` > 0.
    """
    y = layers.linear("attn.qkv", layers.layer_norm("attn_layer_norm", x))
    tables = _rel_tables(layers) if rel is not None else None
    y = layers.linear("attn.proj", rel_pos_attention.attention(y, dims.heads, dims.head_dim, tables, rel))
    x = x + drop_path(y, drop_rate, training)
    y = vit_ops.gelu(layers.linear("fc1", layers.layer_norm("ffn_layer_norm", x)))
    return x + drop_path(layers.linear("fc2", y), drop_rate, training)


def _rel_tables(layers: Layers) -> RelTables:
    names = (f"attn.rel_pos_embed_{side}.embeddings_table_{axis}" for side in "kv" for axis in "vh")
    return RelTables(*(layers.tensor(name) for name in names))


def vit_features(
    x: torch.Tensor,
    layers: Layers,
    space: SearchSpace,
    dims: Sequence[BlockDims],
    rel: RelPosBuffers,
    drop_rates: Sequence[float] | None = None,
    training: bool = False,
) -> torch.Tensor:
    """Pooled penultimate features (B, E) of images (B, C, H, W): patch embedding, the blocks, final norm, pool.

    `dims[b]` are block b's dims (one per block run); `drop_rates[b]` its drop-path rate (None: no drop-path);
    `rel` the grid's relative-position buffers (`rel_pos_of`), used when the space has relative positions.
    """
    h = vit_stem(x, layers, space)
    block_rel = rel if space.relative_position else None
    for b, d in enumerate(dims):
        rate = drop_rates[b] if drop_rates is not None else 0.0
        h = block_forward(h, layers.block(b), d, block_rel, rate, training)
    return vit_tail(h, layers, space)


def vit_stem(x: torch.Tensor, layers: Layers, space: SearchSpace) -> torch.Tensor:
    """Tokens (B, N, E) of images (B, C, H, W): patch embedding, cls token, absolute positions."""
    pos_embed = layers.tensor("pos_embed") if space.abs_pos else None
    return vit_ops.embed_tokens(layers.conv("patch_embed.proj", x), layers.tensor("cls_token"), pos_embed)


def vit_tail(h: torch.Tensor, layers: Layers, space: SearchSpace) -> torch.Tensor:
    """Pooled features (B, E) of the last block's tokens (B, N, E): final norm, then pool."""
    return vit_ops.pool(layers.layer_norm("norm", h), space.global_pool)
