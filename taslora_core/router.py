"""The architecture router: subnet attributes -> per-block, per-layer expert weights (runs once per subnet).

Per active block b: categorical indices of (heads, MLP ratio, embed dim[, depth]) -> learnable embeddings ->
a single-layer LSTM (or GRU, or a block-wise MLP without recurrence) over the blocks -> the head of the
block's architecture group g(b) (weight d x 4K, bias 4K) -> softmax over the K experts of each of the
4 MoLE layers. Group-wise initialisation sets group g's bias to beta at expert g (`tas-lora-method.md` s3).
With `position_heads` every (group, block position) pair has its own head (the paper's R has a block-position
axis); by default a group's head is shared by every position, which the LSTM state already tells apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from taslora_core.slicing import LINEAR_LAYERS
from taslora_core.space import SearchSpace, SpaceError
from taslora_core.subnet import Subnet

ROUTER_KINDS = ("lstm", "gru", "mlp")
ROUTER_INITS = ("group", "random")


@dataclass(frozen=True)
class RouterConfig:
    """Router hyper-parameters (all saved with the MoLE checkpoint)."""

    kind: str = "lstm"
    hidden: int = 128
    attr_dim: int = 32
    include_depth: bool = False
    init: str = "group"
    beta: float = 3.0
    head_init_std: float = 1e-4
    random_init_std: float = 0.02
    position_heads: bool = False

    def to_dict(self) -> dict:
        """JSON form."""
        return asdict(self)


class Router(nn.Module):
    """LSTM/GRU/MLP router with one head per architecture group."""

    def __init__(self, space: SearchSpace, num_experts: int, config: RouterConfig = RouterConfig()) -> None:
        super().__init__()
        if config.kind not in ROUTER_KINDS:
            raise ValueError(f"unknown router '{config.kind}'; choose one of {', '.join(ROUTER_KINDS)}")
        if config.init not in ROUTER_INITS:
            raise ValueError(f"unknown router init '{config.init}'; choose one of {', '.join(ROUTER_INITS)}")
        self.space, self.config, self.num_experts = space, config, num_experts
        self.groups = space.groups(include_depth=config.include_depth)
        if config.init == "group" and num_experts not in (1, len(self.groups)):
            raise ValueError(
                f"group-wise init needs one expert per architecture group ({len(self.groups)}) but K={num_experts}; "
                f"use --experts {len(self.groups)} or --router-init random"
            )
        a = config.attr_dim
        self.embed_heads = nn.Embedding(len(space.num_heads), a)
        self.embed_mlp = nn.Embedding(len(space.mlp_ratios), a)
        self.embed_dim = nn.Embedding(len(space.embed_dims), a)
        n_attr = 3
        if config.include_depth:
            self.embed_depth = nn.Embedding(len(space.depths), a)
            n_attr = 4
        if config.kind == "lstm":
            self.core: nn.Module = nn.LSTM(n_attr * a, config.hidden, num_layers=1, batch_first=True)
        elif config.kind == "gru":
            self.core = nn.GRU(n_attr * a, config.hidden, num_layers=1, batch_first=True)
        else:
            self.core = nn.Sequential(nn.Linear(n_attr * a, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.hidden))
        outputs = len(LINEAR_LAYERS) * num_experts
        # one head per group, or per (group, position): heads are indexed by group * positions + position
        self.positions = space.super_depth if config.position_heads else 1
        heads = len(self.groups) * self.positions
        self.head_weight = nn.Parameter(torch.zeros(heads, config.hidden, outputs))
        self.head_bias = nn.Parameter(torch.zeros(heads, outputs))
        self.reset_heads()

    def reset_heads(self) -> None:
        """Group-wise init (bias beta at expert g for group g, weights ~0) or random init (small weights, bias 0)."""
        cfg = self.config
        with torch.no_grad():
            if cfg.init == "group":
                nn.init.normal_(self.head_weight, std=cfg.head_init_std)
                bias = torch.zeros(len(self.groups), self.positions, len(LINEAR_LAYERS), self.num_experts)
                if self.num_experts > 1:
                    for g in range(len(self.groups)):
                        bias[g, :, :, g] = cfg.beta
                self.head_bias.copy_(bias.reshape(len(self.groups) * self.positions, -1))
            else:
                nn.init.normal_(self.head_weight, std=cfg.random_init_std)
                self.head_bias.zero_()

    def block_groups(self, subnet: Subnet) -> list[int]:
        """Architecture group index of every block of the subnet."""
        depth = subnet.depth if self.config.include_depth else None
        return [
            self.space.group_index(subnet.num_heads[b], subnet.mlp_ratios[b], subnet.embed_dim, depth)
            for b in range(subnet.depth)
        ]

    def attribute_indices(self, subnet: Subnet) -> torch.Tensor:
        """(depth, n_attr) long tensor of categorical attribute indices."""
        s = self.space
        try:
            rows = [
                [s.num_heads.index(subnet.num_heads[b]), s.mlp_ratios.index(subnet.mlp_ratios[b]), s.embed_dims.index(subnet.embed_dim)]
                + ([s.depths.index(subnet.depth)] if self.config.include_depth else [])
                for b in range(subnet.depth)
            ]
        except ValueError:
            raise SpaceError(f"subnet {subnet.to_dict()} is outside search space '{s.name}'; routing needs an in-space subnet") from None
        return torch.tensor(rows, dtype=torch.long, device=self.head_bias.device)

    def logits(self, subnet: Subnet) -> torch.Tensor:
        """(depth, 4, K) routing logits."""
        idx = self.attribute_indices(subnet)
        parts = [self.embed_heads(idx[:, 0]), self.embed_mlp(idx[:, 1]), self.embed_dim(idx[:, 2])]
        if self.config.include_depth:
            parts.append(self.embed_depth(idx[:, 3]))
        seq = torch.cat(parts, dim=-1)
        if isinstance(self.core, nn.Sequential):
            h = self.core(seq)
        else:
            h = self.core(seq.unsqueeze(0))[0].squeeze(0)  # (depth, hidden)
        g = torch.tensor(self.block_groups(subnet), device=h.device)
        if self.positions > 1:
            g = g * self.positions + torch.arange(subnet.depth, device=h.device)
        out = torch.einsum("bd,bdo->bo", h, self.head_weight[g]) + self.head_bias[g]
        return out.reshape(subnet.depth, len(LINEAR_LAYERS), self.num_experts)

    def forward(self, subnet: Subnet) -> torch.Tensor:
        """(depth, 4, K) expert weights, each row summing to 1."""
        return self.logits(subnet).softmax(dim=-1)
