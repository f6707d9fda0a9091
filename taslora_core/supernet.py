"""The weight-entangled ViT supernet with AutoFormer's structure and parameter names.

`Supernet(space)` allocates the full tensors (`autoformer.md` section 3); `supernet(x, subnet)` slices them
for the subnet (`taslora_core.slicing`) and runs a pre-norm ViT on the slices. Blocks past the subnet's depth
are skipped (identity). Optional `deltas` add folded LoRA updates to the sliced linear weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import drop_path, trunc_normal_
from torch import nn

from taslora_core import vit_ops
from taslora_core.slicing import Deltas, block_dims, sliced_state
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet


class _PatchEmbed(nn.Module):
    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.proj = nn.Conv2d(space.in_chans, space.super_embed_dim, space.patch_size, space.patch_size)


class RelPosTables(nn.Module):
    """AutoFormer's pair of relative-position tables (rows and columns) of one attention side (k or v)."""

    def __init__(self, rows: int, cols: int) -> None:
        super().__init__()
        self.embeddings_table_v = nn.Parameter(torch.zeros(rows, cols))
        self.embeddings_table_h = nn.Parameter(torch.zeros(rows, cols))


class _Attention(nn.Module):
    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        e = space.super_embed_dim
        self.qkv = nn.Linear(e, 3 * e)
        if space.relative_position:
            self.rel_pos_embed_k = RelPosTables(space.rel_table_rows, space.rel_table_cols)
            self.rel_pos_embed_v = RelPosTables(space.rel_table_rows, space.rel_table_cols)
        self.proj = nn.Linear(e, e)


class _Block(nn.Module):
    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        e = space.super_embed_dim
        self.attn = _Attention(space)
        self.attn_layer_norm = nn.LayerNorm(e)
        self.ffn_layer_norm = nn.LayerNorm(e)
        self.fc1 = nn.Linear(e, space.super_hidden_dim)
        self.fc2 = nn.Linear(space.super_hidden_dim, e)


class Supernet(nn.Module):
    """AutoFormer-compatible supernet. Parameter names and shapes equal `Vision_TransformerSuper`'s."""

    def __init__(self, space: SearchSpace, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.space = space
        e = space.super_embed_dim
        # Registration order reproduces AutoFormer's state-dict order: own parameters first, then children.
        if space.abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, space.num_tokens, e))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.patch_embed_super = _PatchEmbed(space)
        self.blocks = nn.ModuleList(_Block(space) for _ in range(space.super_depth))
        self.norm = nn.LayerNorm(e)
        self.head = nn.Linear(e, space.num_classes)
        # Drop-path rates by position in the supernet, not in the subnet (AutoFormer).
        depth = space.super_depth
        self.drop_path_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        idx_v, idx_h = vit_ops.rel_pos_index(space.img_size // space.patch_size, space.max_relative_position)
        self.register_buffer("rel_idx_v", idx_v, persistent=False)
        self.register_buffer("rel_idx_h", idx_h, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """AutoFormer's init: trunc_normal(.02) for linears, pos/cls and rel-pos tables; LN 1/0; conv default."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, RelPosTables):
                trunc_normal_(module.embeddings_table_v, std=0.02)
                trunc_normal_(module.embeddings_table_h, std=0.02)
        if self.space.abs_pos:
            trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)

    # ------------------------------------------------------------------ forward
    def subnet_tensors(self, subnet: Subnet, deltas: Deltas | None = None) -> dict[str, torch.Tensor]:
        """The subnet's sliced tensors (standalone names), with `deltas` folded into the linear weights."""
        subnet.check_fits(self.space)
        return sliced_state(dict(self.named_parameters()), self.space, subnet, deltas)

    def forward_features(self, x: torch.Tensor, subnet: Subnet, deltas: Deltas | None = None) -> torch.Tensor:
        """Pooled penultimate features (B, E) of `subnet`."""
        return self._features(x, subnet, self.subnet_tensors(subnet, deltas))

    def forward(self, x: torch.Tensor, subnet: Subnet, deltas: Deltas | None = None) -> torch.Tensor:
        """Logits of `subnet` for images x of shape (B, C, H, W)."""
        return self.forward_tensors(x, subnet, self.subnet_tensors(subnet, deltas))

    def forward_tensors(self, x: torch.Tensor, subnet: Subnet, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits from tensors already sliced (and folded) by `subnet_tensors`: slice once, run many batches."""
        return F.linear(self._features(x, subnet, tensors), tensors["head.weight"], tensors["head.bias"])

    def _features(self, x: torch.Tensor, subnet: Subnet, p: dict[str, torch.Tensor]) -> torch.Tensor:
        space = self.space
        if x.shape[-1] != space.img_size or x.shape[-2] != space.img_size:
            raise ValueError(
                f"input is {tuple(x.shape[-2:])} but the supernet expects {space.img_size}x{space.img_size}; "
                "resize the images"
            )
        e = subnet.embed_dim
        patches = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=space.patch_size)
        h = vit_ops.embed_tokens(patches, p["cls_token"], p.get("pos_embed"))
        for b in range(subnet.depth):
            d = block_dims(space, subnet, b)
            pre = f"blocks.{b}."
            rate = self.drop_path_rates[b]
            y = F.layer_norm(h, (e,), p[pre + "attn_layer_norm.weight"], p[pre + "attn_layer_norm.bias"], vit_ops.LN_EPS)
            qkv = F.linear(y, p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"])
            rel_k = rel_v = None
            if space.relative_position:
                rel_k = self._rel(p, pre + "attn.rel_pos_embed_k.")
                rel_v = self._rel(p, pre + "attn.rel_pos_embed_v.")
            y = vit_ops.attention_core(qkv, d.heads, d.head_dim, rel_k, rel_v)
            y = F.linear(y, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])
            h = h + drop_path(y, rate, self.training)
            y = F.layer_norm(h, (e,), p[pre + "ffn_layer_norm.weight"], p[pre + "ffn_layer_norm.bias"], vit_ops.LN_EPS)
            y = vit_ops.gelu(F.linear(y, p[pre + "fc1.weight"], p[pre + "fc1.bias"]))
            y = F.linear(y, p[pre + "fc2.weight"], p[pre + "fc2.bias"])
            h = h + drop_path(y, rate, self.training)
        h = F.layer_norm(h, (e,), p["norm.weight"], p["norm.bias"], vit_ops.LN_EPS)
        return vit_ops.pool(h, space.global_pool)

    def _rel(self, p: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        return vit_ops.rel_pos_embedding(
            p[prefix + "embeddings_table_v"], p[prefix + "embeddings_table_h"], self.rel_idx_v, self.rel_idx_h
        )

    # ------------------------------------------------------------------ I/O
    @staticmethod
    def from_autoformer_checkpoint(path: str | Path, space: SearchSpace | str) -> "Supernet":
        """Load an official AutoFormer checkpoint (dict with 'model', maybe 'args') with weights_only loading."""
        from taslora_core.checkpoint import load_autoformer_state

        space = SearchSpace.resolve(space) if isinstance(space, str) else space
        model = Supernet(space)
        model.load_state_dict_strict(load_autoformer_state(path), source=str(path))
        return model

    def load_state_dict_strict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Strict load whose error names the missing, unexpected and mis-shaped keys."""
        from taslora_core.checkpoint import check_state_keys

        check_state_keys(self.state_dict(), state, source)
        self.load_state_dict(state, strict=True)
