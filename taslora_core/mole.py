"""Mixture of LoRA experts (MoLE) on the four linear layers of every supernet block, and the MoLE model.

Expert k of a layer is E_k = (alpha / r) U_k D_k (the paper: alpha = 1, i.e. U_k D_k / r) with U_k (out_super, r)
starting at zero and D_k (r, in_super) at LoRA's usual small random init. The experts of a layer are stored
concatenated, U (out_super, K*r) and D (K*r, in_super), so the routed merge is one matmul on the *sliced* factors:

    delta = slice_rows(U) * (p_k * alpha / r repeated r times) @ slice_cols(D)

computed once per subnet (per training step), never per token, and added to the sliced supernet weight. The
blocks of a subnet whose layer has the same sliced shape are merged together in one batched matmul.
`column_scale` and `LoRAExperts.sliced_factors` are the one home of the scale and of the U/D slicing; the
run-time LoRA branches of `taslora_deploy.fold.UnmergedMoLEViT` use them too. Checkpoint files: `mole_io`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from taslora_core import slicing
from taslora_core.router import Router, RouterConfig
from taslora_core.slicing import LINEAR_LAYERS, BlockDims, Deltas, block_dims
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_core.supernet import Supernet


@dataclass(frozen=True)
class MoLEConfig:
    """Experts and router settings. `num_experts=None` means one expert per architecture group.

    `alpha` is LoRA's scale numerator: an expert adds (alpha / rank) U D. The paper's E = U D / r is alpha = 1.
    """

    num_experts: int | None = None
    rank: int = 8
    router: RouterConfig = field(default_factory=RouterConfig)
    alpha: float = 1.0

    def resolved_experts(self, space: SearchSpace) -> int:
        """K: the given number, or the number of architecture groups."""
        return self.num_experts or len(space.groups(include_depth=self.router.include_depth))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"num_experts": self.num_experts, "rank": self.rank, "router": self.router.to_dict(), "alpha": self.alpha}

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> "MoLEConfig":
        """Inverse of to_dict."""
        return MoLEConfig(doc.get("num_experts"), int(doc.get("rank", 8)), RouterConfig(**doc.get("router", {})),
                          float(doc.get("alpha", 1.0)))


def _io_dims(space: SearchSpace, layer: str) -> tuple[int, int]:
    e, h = space.super_embed_dim, space.super_hidden_dim
    return {"qkv": (3 * e, e), "proj": (e, e), "fc1": (h, e), "fc2": (e, h)}[layer]


def column_scale(probs: torch.Tensor, scale: float, rank: int) -> torch.Tensor:
    """Per-column scale of the concatenated experts: (..., K) routing weights -> (..., K*r), p_k * alpha / r
    repeated r times (`scale` is alpha / r)."""
    return (probs * scale).repeat_interleave(rank, dim=-1)


class LoRAExperts(nn.Module):
    """K rank-r experts for each of qkv/proj/fc1/fc2 of every supernet block."""

    def __init__(self, space: SearchSpace, num_experts: int, rank: int, alpha: float = 1.0) -> None:
        super().__init__()
        self.space, self.num_experts, self.rank = space, num_experts, rank
        self.scale = alpha / rank  # LoRA's alpha / r
        self.blocks = nn.ModuleList()
        for _ in range(space.super_depth):
            block = nn.ParameterDict()
            for layer in LINEAR_LAYERS:
                out_f, in_f = _io_dims(space, layer)
                block[f"{layer}_U"] = nn.Parameter(torch.zeros(out_f, num_experts * rank))
                d = torch.empty(num_experts * rank, in_f)
                nn.init.kaiming_uniform_(d, a=math.sqrt(5))  # LoRA's init of its down projection
                block[f"{layer}_D"] = nn.Parameter(d)
            self.blocks.append(block)

    def column_scale(self, probs: torch.Tensor) -> torch.Tensor:
        """(..., K) routing weights -> (..., K*r) scale of U's columns (see `column_scale`)."""
        return column_scale(probs, self.scale, self.rank)

    def sliced_factors(self, layer: str, blocks: Sequence[int], d: BlockDims) -> tuple[torch.Tensor, torch.Tensor]:
        """U rows (n, out, K*r) and D columns (n, K*r, in) of `layer` in `blocks`, all sliced to dims `d`.

        Every block listed must give the layer the same sliced shape (same heads for qkv/proj, same hidden
        width for fc1/fc2). Stacking puts the blocks in dim 1 of U so that the slicing rule's row rule (dim 0,
        qkv interleaving included) applies to all of them at once.
        """
        u = torch.stack([self.blocks[b][f"{layer}_U"] for b in blocks], dim=1)  # (out_super, n, K*r)
        dn = torch.stack([self.blocks[b][f"{layer}_D"] for b in blocks])  # (n, K*r, in_super)
        return slicing.rows(layer, u, d).transpose(0, 1), slicing.cols(layer, dn, d)

    def deltas(self, subnet: Subnet, probs: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
        """Routed weight updates of the subnet's sliced shape; probs is (depth, 4, K).

        One batched matmul per (layer, sliced shape): the blocks of a subnet take few distinct shapes.
        """
        dims = [block_dims(self.space, subnet, b) for b in range(subnet.depth)]
        scales = self.column_scale(probs[: subnet.depth])  # (depth, 4, K*r)
        out: dict[tuple[int, str], torch.Tensor] = {}
        for i, layer in enumerate(LINEAR_LAYERS):
            groups: dict[tuple[int, int], list[int]] = {}
            for b, d in enumerate(dims):
                groups.setdefault((slicing.out_features(layer, d), slicing.in_features(layer, d)), []).append(b)
            for blocks in groups.values():
                u, dn = self.sliced_factors(layer, blocks, dims[blocks[0]])
                scale = scales[:, i] if len(blocks) == subnet.depth else scales[blocks, i]
                merged = torch.bmm(u * scale.unsqueeze(1), dn)  # (n, out, in)
                out.update(zip(((b, layer) for b in blocks), merged.unbind(0)))
        return {(b, layer): out[(b, layer)] for b in range(subnet.depth) for layer in LINEAR_LAYERS}


class MoLEModel(nn.Module):
    """A frozen supernet with LoRA experts and an architecture router."""

    def __init__(self, supernet: Supernet, config: MoLEConfig = MoLEConfig()) -> None:
        super().__init__()
        self.supernet, self.config = supernet, config
        self.space = supernet.space
        k = config.resolved_experts(self.space)
        self.experts = LoRAExperts(self.space, k, config.rank, config.alpha)
        self.router = Router(self.space, k, config.router)
        for p in self.supernet.parameters():
            p.requires_grad_(False)

    @property
    def num_experts(self) -> int:
        """K."""
        return self.experts.num_experts

    def routing(self, subnet: Subnet) -> torch.Tensor:
        """(depth, 4, K) routing weights of the subnet (checks it is in the search space)."""
        subnet.check_in_space(self.space)
        return self.router(subnet)

    def deltas(self, subnet: Subnet) -> Deltas:
        """Run the router once and merge the routed experts into per-layer weight updates."""
        return self.experts.deltas(subnet, self.routing(subnet))

    def forward(self, x: torch.Tensor, subnet: Subnet, use_experts: bool = True) -> torch.Tensor:
        """Logits of `subnet` with its experts merged (or of the bare supernet)."""
        return self.supernet(x, subnet, self.deltas(subnet) if use_experts else None)

    def forward_features(self, x: torch.Tensor, subnet: Subnet, use_experts: bool = True) -> torch.Tensor:
        """Penultimate features of `subnet` with or without its experts."""
        return self.supernet.forward_features(x, subnet, self.deltas(subnet) if use_experts else None)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Experts and router tensors (what a MoLE checkpoint stores besides the supernet reference)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("supernet.")}

