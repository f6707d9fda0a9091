"""A plain ViT with exactly one subnet's shapes, materialised from a supernet (optionally with folded experts).

No slicing happens at run time: every layer is an ordinary `nn.Conv2d` / `nn.Linear` / `nn.LayerNorm` of
the subnet's size and the relative-position index tables are precomputed buffers, so the model exports to
ONNX/TensorRT as a static graph with a dynamic batch axis. Its layers and forward are the supernet's
(`taslora_core.vit`), run on its own weights. Saving and loading: `taslora_deploy.standalone.io`.
"""

from __future__ import annotations


import torch
from torch import nn

from taslora_core.slicing import Deltas, block_dims
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_core.vit import Block, ModuleLayers, PatchEmbed, register_rel_pos, rel_pos_of, vit_features

__all__ = ["StandaloneViT", "materialize"]


class StandaloneViT(nn.Module):
    """The ViT of one subnet. Parameter names match `slicing.sliced_state`."""

    def __init__(self, space: SearchSpace, subnet: Subnet) -> None:
        super().__init__()
        subnet.check_fits(space)
        self.space, self.subnet = space, subnet
        e = subnet.embed_dim
        self.block_dims = [block_dims(space, subnet, b) for b in range(subnet.depth)]
        if space.abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, space.num_tokens, e))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.patch_embed = PatchEmbed(space.in_chans, e, space.patch_size)
        self.blocks = nn.ModuleList(
            Block(e, d.qk, d.hidden, (space.rel_table_rows, d.head_dim) if space.relative_position else None)
            for d in self.block_dims
        )
        self.norm = nn.LayerNorm(e)
        self.head = nn.Linear(e, space.num_classes)
        register_rel_pos(self, space)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (B, E)."""
        return vit_features(x, ModuleLayers(self), self.space, self.block_dims, rel_pos_of(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images (B, C, H, W)."""
        return self.head(self.forward_features(x))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return (self.space.in_chans, self.space.img_size, self.space.img_size)


def materialize(supernet: nn.Module, subnet: Subnet, deltas: Deltas | None = None) -> StandaloneViT:
    """A standalone ViT holding `subnet`'s slices of `supernet` (plus folded `deltas`), loaded strictly."""
    model = StandaloneViT(supernet.space, subnet)
    with torch.no_grad():
        tensors = {k: v.detach().clone() for k, v in supernet.subnet_tensors(subnet, deltas).items()}
    model.load_state_dict(tensors, strict=True)
    ref = next(supernet.parameters())
    return model.to(device=ref.device, dtype=ref.dtype).eval()

