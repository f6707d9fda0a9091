"""Mixture of LoRA experts (MoLE) on the four linear layers of every supernet block, and the MoLE model.

Expert k of a layer is E_k = (alpha / r) U_k D_k (the paper: alpha = 1, i.e. U_k D_k / r) with U_k (out_super, r)
starting at zero and D_k (r, in_super) at LoRA's usual small random init. The experts of a layer are stored
concatenated, U (out_super, K*r) and D (K*r, in_super), so the routed merge is one matmul on the *sliced* factors:

    delta = slice_rows(U) * (p_k * alpha / r repeated r times) @ slice_cols(D)

computed once per subnet (per training step), never per token, and added to the sliced supernet weight. The
blocks of a subnet whose layer has the same sliced shape are merged together in one batched matmul.
`column_scale` and `ExpertSet.sliced_factors` are the one home of the scale and of the U/D slicing; the
run-time LoRA branches of `taslora_deploy.fold.UnmergedMoLEViT` use them too. Checkpoint files: `mole_io`.

Two expert structures (`MoLEConfig.structure`), both of this concatenated form, so every one folds exactly:

- ``mixture`` (the paper): K experts per layer, each its own U_k and D_k; the router's softmax weights them.
- ``factorised`` (HydraLoRA-style): per layer one shared down-projection D (r, in) and C up-projections: a shared
  one plus one per value of the architecture factors that shape the layer (heads and embed dim for qkv/proj, MLP
  ratio and embed dim for fc1/fc2). The weights are fixed by the block's architecture (`FactorRouting`): 1 for
  the shared part and for the block's own factor values, 0 elsewhere, so delta = (alpha/r) (U_0 + U_f + U_e) D.
  D is repeated C times in `sliced_factors`, which keeps the one merge (and the run-time branches) unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from taslora_core import slicing
from taslora_core.router import FactorRouting, Router, RouterConfig, factor_columns
from taslora_core.slicing import LINEAR_LAYERS, BlockDims, Deltas, block_dims
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_core.supernet import Supernet


EXPERT_STRUCTURES = ("mixture", "factorised")


@dataclass(frozen=True)
class MoLEConfig:
    """Experts and router settings. `num_experts=None` means one expert per architecture group.

    `alpha` is LoRA's scale numerator: an expert adds (alpha / rank) U D. The paper's E = U D / r is alpha = 1.
    `structure` is one of `EXPERT_STRUCTURES` (module docstring); checkpoints without it are mixtures.
    """

    num_experts: int | None = None
    rank: int = 8
    router: RouterConfig = field(default_factory=RouterConfig)
    alpha: float = 1.0
    structure: str = "mixture"

    def __post_init__(self) -> None:
        if self.structure not in EXPERT_STRUCTURES:
            raise ValueError(f"unknown expert structure '{self.structure}'; choose one of {', '.join(EXPERT_STRUCTURES)}")

    def resolved_experts(self, space: SearchSpace) -> int:
        """K: the number of parts the routing weighs (mixture: the given number, or the number of architecture
        groups; factorised: the shared part plus one per factor value)."""
        if self.structure == "factorised":
            return factor_columns(space)
        return self.num_experts or len(space.groups(include_depth=self.router.include_depth))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"num_experts": self.num_experts, "rank": self.rank, "router": self.router.to_dict(), "alpha": self.alpha,
                "structure": self.structure}

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> "MoLEConfig":
        """Inverse of to_dict."""
        return MoLEConfig(doc.get("num_experts"), int(doc.get("rank", 8)), RouterConfig(**doc.get("router", {})),
                          float(doc.get("alpha", 1.0)), str(doc.get("structure", "mixture")))


def _io_dims(space: SearchSpace, layer: str) -> tuple[int, int]:
    e, h = space.super_embed_dim, space.super_hidden_dim
    return {"qkv": (3 * e, e), "proj": (e, e), "fc1": (h, e), "fc2": (e, h)}[layer]


def column_scale(probs: torch.Tensor, scale: float, rank: int) -> torch.Tensor:
    """Per-column scale of the concatenated experts: (..., K) routing weights -> (..., K*r), p_k * alpha / r
    repeated r times (`scale` is alpha / r)."""
    return (probs * scale).repeat_interleave(rank, dim=-1)


class ExpertSet(nn.Module):
    """Rank-r LoRA parts for each of qkv/proj/fc1/fc2 of every supernet block, stored concatenated: U (out_super,
    K*r) per layer and a down-projection D (K*r, in_super), or (r, in_super) shared by the K parts
    (`shared_down`). The routing weights (depth, 4, K) scale U's column blocks; `deltas` merges them."""

    shared_down = False

    def __init__(self, space: SearchSpace, num_experts: int, rank: int, alpha: float = 1.0) -> None:
        super().__init__()
        self.space, self.num_experts, self.rank = space, num_experts, rank
        self.scale = alpha / rank  # LoRA's alpha / r
        self.blocks = nn.ModuleList()
        down_rows = rank if self.shared_down else num_experts * rank
        for _ in range(space.super_depth):
            block = nn.ParameterDict()
            for layer in LINEAR_LAYERS:
                out_f, in_f = _io_dims(space, layer)
                block[f"{layer}_U"] = nn.Parameter(torch.zeros(out_f, num_experts * rank))
                d = torch.empty(down_rows, in_f)
                nn.init.kaiming_uniform_(d, a=math.sqrt(5))  # LoRA's init of its down projection
                block[f"{layer}_D"] = nn.Parameter(d)
            self.blocks.append(block)

    def column_scale(self, probs: torch.Tensor) -> torch.Tensor:
        """(..., K) routing weights -> (..., K*r) scale of U's columns (see `column_scale`)."""
        return column_scale(probs, self.scale, self.rank)

    def up_params(self) -> list[nn.Parameter]:
        """Every up-projection U (LoRA's B), in block then layer order."""
        return [block[f"{layer}_U"] for block in self.blocks for layer in LINEAR_LAYERS]

    def down_params(self) -> list[nn.Parameter]:
        """Every down-projection D (LoRA's A), in block then layer order."""
        return [block[f"{layer}_D"] for block in self.blocks for layer in LINEAR_LAYERS]

    def down(self, block: int, layer: str) -> torch.Tensor:
        """D of one (block, layer) at full size as (K*r, in_super): a shared D is repeated once per part."""
        d = self.blocks[block][f"{layer}_D"]
        return d.repeat(self.num_experts, 1) if self.shared_down else d

    def sliced_factors(self, layer: str, blocks: Sequence[int], d: BlockDims) -> tuple[torch.Tensor, torch.Tensor]:
        """U rows (n, out, K*r) and D columns (n, K*r, in) of `layer` in `blocks`, all sliced to dims `d`.

        Every block listed must give the layer the same sliced shape (same heads for qkv/proj, same hidden
        width for fc1/fc2). Stacking puts the blocks in dim 1 of U so that the slicing rule's row rule (dim 0,
        qkv interleaving included) applies to all of them at once.
        """
        u = torch.stack([self.blocks[b][f"{layer}_U"] for b in blocks], dim=1)  # (out_super, n, K*r)
        dn = torch.stack([self.down(b, layer) for b in blocks])  # (n, K*r, in_super)
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


class LoRAExperts(ExpertSet):
    """The paper's mixture: K rank-r experts (own U_k and D_k) for each of qkv/proj/fc1/fc2 of every block."""


class FactorisedExperts(ExpertSet):
    """A shared down-projection and one up-projection per part (shared + factor values) per layer (module
    docstring); `FactorRouting` gives the parts' fixed weights."""

    shared_down = True


def make_experts(space: SearchSpace, config: MoLEConfig) -> ExpertSet:
    """The expert set of `config.structure`."""
    cls = FactorisedExperts if config.structure == "factorised" else LoRAExperts
    return cls(space, config.resolved_experts(space), config.rank, config.alpha)


class MoLEModel(nn.Module):
    """A frozen supernet with LoRA experts and an architecture router."""

    def __init__(self, supernet: Supernet, config: MoLEConfig = MoLEConfig()) -> None:
        super().__init__()
        self.supernet, self.config = supernet, config
        self.space = supernet.space
        k = config.resolved_experts(self.space)
        self.experts = make_experts(self.space, config)
        self.router: Router | FactorRouting = (
            FactorRouting(self.space, config.router) if config.structure == "factorised"
            else Router(self.space, k, config.router))
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

