"""The architecture router: subnet attributes -> per-block, per-layer expert weights (runs once per subnet).

Per active block b: categorical indices of (heads, MLP ratio, embed dim[, depth]) -> learnable embeddings ->
a single-layer LSTM (or GRU, or a block-wise MLP without recurrence) over the blocks -> the head of the
block's architecture group g(b) (weight d x 4K, bias 4K) -> softmax over the K experts of each of the
4 MoLE layers. Group-wise initialisation sets group g's bias to beta at expert g (`tas-lora-method.md` s3).
With `position_heads` every (group, block position) pair has its own head (the paper's R has a block-position
axis); by default a group's head is shared by every position, which the LSTM state already tells apart.

Variants the training recipes use (`taslora_core.train.recipes`): `init_mass` sets beta so that a group's own
expert starts at that routing mass (beta = ln(p (K - 1) / (1 - p)); p = 0.9 at K = 27 gives beta ~ 5.5), and
`hard` replaces the learned routing by one-hot routing to the block's group (the router's parameters are kept,
unused, so every checkpoint has the same tensors). `routing_mutual_information` is the MI term some recipes add
to the loss.
"""

from __future__ import annotations

import math
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
    init_mass: float | None = None  # group-wise init: own-expert mass at step 0 (sets beta; None: `beta` as given)
    hard: bool = False  # one-hot routing to the block's group instead of the learned router

    def to_dict(self) -> dict:
        """JSON form."""
        return asdict(self)

    def group_beta(self, num_experts: int) -> float:
        """The group-wise init's bias at a group's own expert: `beta`, or the one that gives `init_mass`."""
        return self.beta if self.init_mass is None else beta_for_mass(self.init_mass, num_experts)


def beta_for_mass(mass: float, num_experts: int) -> float:
    """The bias beta at the own expert for which softmax(beta * onehot) puts `mass` on it among K experts:
    ln(p (K - 1) / (1 - p))."""
    if not 0.0 < mass < 1.0:
        raise ValueError(f"the own expert's initial routing mass must be in (0, 1), got {mass}")
    if num_experts < 2:
        return 0.0  # one expert always gets weight 1
    return math.log(mass * (num_experts - 1) / (1.0 - mass))


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
        if config.hard and num_experts not in (1, len(self.groups)):
            raise ValueError(f"hard group routing needs one expert per architecture group ({len(self.groups)}) but "
                             f"K={num_experts}; use --experts {len(self.groups)} or --routing learned")
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
                    beta = cfg.group_beta(self.num_experts)
                    for g in range(len(self.groups)):
                        bias[g, :, :, g] = beta
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
        """(depth, 4, K) expert weights, each row summing to 1 (one-hot on the block's group with `hard`)."""
        if self.config.hard:
            return self.hard_routing(subnet)
        return self.logits(subnet).softmax(dim=-1)

    def hard_routing(self, subnet: Subnet) -> torch.Tensor:
        """(depth, 4, K) one-hot routing of every block to its group's expert (all ones when K = 1)."""
        device = self.head_bias.device
        if self.num_experts == 1:
            return torch.ones(subnet.depth, len(LINEAR_LAYERS), 1, device=device)
        subnet.check_in_space(self.space)
        groups = torch.tensor(self.block_groups(subnet), device=device)
        onehot = torch.nn.functional.one_hot(groups, self.num_experts).to(self.head_bias.dtype)
        return onehot[:, None, :].expand(subnet.depth, len(LINEAR_LAYERS), self.num_experts).contiguous()


def routing_mutual_information(probs: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """I(E; G) = H(E) - H(E | G) in nats between the expert E and the architecture group G of the blocks, averaged
    over the layers (Mod-Squad's MI loss, with groups in the place of tasks).

    `probs` (N, L, K) is the routing of N blocks (of one or several subnets), `groups` (N,) their group indices.
    p(E | g) is the mean routing of the blocks of group g, P(g) their share and p(E) = sum_g P(g) p(E | g). A router
    that routes every group alike (e.g. uniformly) scores 0; routing every group to its own expert scores H(G).
    """
    onehot = torch.nn.functional.one_hot(groups.to(probs.device), num_groups).to(probs.dtype)  # (N, G)
    counts = onehot.sum(0)  # (G,)
    present = counts > 0
    per_group = torch.einsum("ng,nlk->glk", onehot, probs)[present] / counts[present][:, None, None]  # (G', L, K)
    share = counts[present] / counts.sum()  # P(g)
    marginal = torch.einsum("g,glk->lk", share, per_group)  # p(E) per layer

    def entropy(p: torch.Tensor) -> torch.Tensor:
        # p log p with the log clamped: 0 at p = 0 with a finite gradient (xlogy's is -inf when a softmax underflows)
        return -(p * p.clamp_min(1e-12).log()).sum(-1)

    conditional = torch.einsum("g,gl->l", share, entropy(per_group))  # H(E | G) per layer
    return (entropy(marginal) - conditional).mean()


# ---------------------------------------------------------------------- factorised experts' fixed weights
LAYER_FACTOR = {"qkv": "num_heads", "proj": "num_heads", "fc1": "mlp_ratio", "fc2": "mlp_ratio"}
"""The architecture factor besides the embed dim that shapes each MoLE layer (its rows or columns)."""


def factor_columns(space: SearchSpace) -> int:
    """Parts per layer of the factorised experts: the shared one, one per value of the layer's factor (heads or
    MLP ratio, padded to the longer list so every layer has the same count) and one per embed dim."""
    return 1 + max(len(space.num_heads), len(space.mlp_ratios)) + len(space.embed_dims)


class FactorRouting(nn.Module):
    """The fixed part weights of the factorised experts (`taslora_core.mole`), in the router's place and with its
    interface (`groups`, `block_groups`, `config`, `num_experts`): per block and layer, 1 on the shared part, on
    the part of the block's value of the layer's factor and on the part of the subnet's embed dim, 0 elsewhere.
    No parameters; it runs once per subnet like the router."""

    def __init__(self, space: SearchSpace, config: RouterConfig = RouterConfig()) -> None:
        super().__init__()
        self.space, self.config = space, config
        self.num_experts = factor_columns(space)
        self.groups = space.groups(include_depth=config.include_depth)
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def block_groups(self, subnet: Subnet) -> list[int]:
        """Architecture group index of every block of the subnet."""
        depth = subnet.depth if self.config.include_depth else None
        return [self.space.group_index(subnet.num_heads[b], subnet.mlp_ratios[b], subnet.embed_dim, depth)
                for b in range(subnet.depth)]

    def forward(self, subnet: Subnet) -> torch.Tensor:
        """(depth, 4, C) part weights (0 or 1) of the subnet's blocks."""
        s = self.space
        subnet.check_in_space(s)
        first = 1 + max(len(s.num_heads), len(s.mlp_ratios))  # column of the first embed-dim part
        out = torch.zeros(subnet.depth, len(LINEAR_LAYERS), self.num_experts, device=self._device_probe.device)
        e = first + s.embed_dims.index(subnet.embed_dim)
        for b in range(subnet.depth):
            for i, layer in enumerate(LINEAR_LAYERS):
                if LAYER_FACTOR[layer] == "num_heads":
                    f = 1 + s.num_heads.index(subnet.num_heads[b])
                else:
                    f = 1 + s.mlp_ratios.index(subnet.mlp_ratios[b])
                out[b, i, [0, f, e]] = 1.0
        return out
