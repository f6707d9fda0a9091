"""The weight-entangled ViT supernet with AutoFormer's structure and parameter names.

`Supernet(space)` allocates the full tensors (`autoformer.md` section 3); `supernet(x, subnet)` slices them
for the subnet (`taslora_core.slicing`) and runs the ViT forward of `taslora_core.vit` on the slices, the
same forward the standalone ViT runs on its own weights. Blocks past the subnet's depth are skipped
(identity). Optional `deltas` add folded LoRA updates to the sliced linear weights.

Loading files is not done here: see `taslora_core.checkpoint` (`load_supernet`, `load_autoformer_supernet`).
"""

from __future__ import annotations


import torch
from timm.layers import trunc_normal_
from torch import nn

from taslora_core.slicing import Deltas, block_dims, sliced_state
from taslora_core.space import SearchSpace
from taslora_core.state_check import load_state_strict
from taslora_core.subnet import Subnet
from taslora_core.vit import Block, PatchEmbed, RelPosTables, SlicedLayers, register_rel_pos, rel_pos_of, vit_features

__all__ = ["RelPosTables", "Supernet", "drop_path_rates"]


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """AutoFormer's stochastic-depth schedule: rates rise linearly from 0 to `max_rate` over the supernet's
    `depth` blocks, by position in the supernet, not in the subnet."""
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


class Supernet(nn.Module):
    """AutoFormer-compatible supernet. Parameter names and shapes equal `Vision_TransformerSuper`'s."""

    def __init__(self, space: SearchSpace, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.space = space
        e = space.super_embed_dim
        rel_table = (space.rel_table_rows, space.rel_table_cols) if space.relative_position else None
        # Registration order reproduces AutoFormer's state-dict order: own parameters first, then children.
        if space.abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, space.num_tokens, e))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.patch_embed_super = PatchEmbed(space.in_chans, e, space.patch_size)
        # AutoFormer allocates qkv as (3E, E) whatever the heads: q, k and v are each E wide.
        self.blocks = nn.ModuleList(Block(e, e, space.super_hidden_dim, rel_table) for _ in range(space.super_depth))
        self.norm = nn.LayerNorm(e)
        self.head = nn.Linear(e, space.num_classes)
        self.set_drop_path(drop_path_rate)
        register_rel_pos(self, space)
        self.reset_parameters()

    def set_drop_path(self, max_rate: float) -> None:
        """Set the per-block stochastic-depth rates (`drop_path_rates`) to rise to `max_rate`."""
        self.drop_path_rates = drop_path_rates(max_rate, self.space.super_depth)

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
        return self._layers(subnet, tensors).linear("head", self._features(x, subnet, tensors))

    def _features(self, x: torch.Tensor, subnet: Subnet, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled features (B, E) from tensors already sliced by `subnet_tensors`."""
        space = self.space
        if x.shape[-1] != space.img_size or x.shape[-2] != space.img_size:
            raise ValueError(
                f"input is {tuple(x.shape[-2:])} but the supernet expects {space.img_size}x{space.img_size}; "
                "resize the images"
            )
        dims = [block_dims(space, subnet, b) for b in range(subnet.depth)]
        return vit_features(
            x, self._layers(subnet, tensors), space, dims, rel_pos_of(self),
            self.drop_path_rates, self.training,
        )

    def _layers(self, subnet: Subnet, tensors: dict[str, torch.Tensor]) -> SlicedLayers:
        return SlicedLayers(tensors, subnet.embed_dim, self.space.patch_size)

    def load_state_dict_strict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Strict load whose error names the missing, unexpected and mis-shaped keys."""
        load_state_strict(self, state, source)
