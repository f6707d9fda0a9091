"""AutoFormer's genetic operators on subnets: the flat candidate tuple, mutation and uniform crossover."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from taslora_core.search.config import SearchError
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet


def subnet_from_key(key: Sequence[Any]) -> Subnet:
    """Decode AutoFormer's flat candidate tuple (depth, ratios..., heads..., embed)."""
    depth = int(key[0])
    if len(key) != 2 * depth + 2:
        raise SearchError(f"candidate {tuple(key)} has {len(key)} genes; depth {depth} needs {2 * depth + 2}")
    return Subnet(
        embed_dim=int(key[-1]), depth=depth,
        mlp_ratios=tuple(float(r) for r in key[1:1 + depth]),
        num_heads=tuple(int(h) for h in key[1 + depth:1 + 2 * depth]),
    )


def mutate(space: SearchSpace, parent: Subnet, rng: random.Random, m_prob: float, s_prob: float) -> Subnet:
    """AutoFormer's mutation: depth (s_prob; extend with random genes or truncate), each ratio (m_prob),
    each head count (m_prob), then the embed dim (s_prob)."""
    depth = parent.depth
    ratios, heads = list(parent.mlp_ratios), list(parent.num_heads)
    if rng.random() < s_prob:
        new_depth = rng.choice(space.depths)
        if new_depth > depth:
            extra = new_depth - depth
            ratios += [rng.choice(space.mlp_ratios) for _ in range(extra)]
            heads += [rng.choice(space.num_heads) for _ in range(extra)]
        else:
            ratios, heads = ratios[:new_depth], heads[:new_depth]
        depth = new_depth
    for i in range(depth):
        if rng.random() < m_prob:
            ratios[i] = rng.choice(space.mlp_ratios)
    for i in range(depth):
        if rng.random() < m_prob:
            heads[i] = rng.choice(space.num_heads)
    embed = parent.embed_dim
    if rng.random() < s_prob:
        embed = rng.choice(space.embed_dims)
    return Subnet(embed_dim=embed, depth=depth, mlp_ratios=tuple(ratios), num_heads=tuple(heads))


def crossover(p1: Subnet, p2: Subnet, rng: random.Random) -> Subnet:
    """Uniform crossover of two parents of equal depth: each gene of the flat tuple 50/50 from either."""
    if p1.depth != p2.depth:
        raise SearchError(f"crossover needs parents of equal depth, got {p1.depth} and {p2.depth}")
    genes = [a if rng.random() < 0.5 else b for a, b in zip(p1.key(), p2.key())]
    return subnet_from_key(genes)
