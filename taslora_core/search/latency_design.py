"""Which subnets to measure for fitting a latency model, and which to hold out for scoring it.

`design_subnets(space, n, seed)` is the first `n` of one deterministic sequence (so `--samples 32` measures
the first half of what `--samples 64` measures, and an accuracy-vs-samples curve can reuse one pool):

1. the extremes of every dimension: for each embed dim, the shallowest subnet of the cheapest blocks and the
   deepest of the dearest (this includes the space's smallest and largest subnets, and the min and max of
   depth, heads and MLP ratio);
2. one subnet made of a single block type, for every (embed, heads, MLP ratio) not covered yet, at depths
   cycling through the space's (so every lookup term is measured alone at least once);
3. then mixed subnets, embed dims and depths taken in turn (balanced), blocks drawn at random.

`heldout_subnets` draws uniformly at random (the distribution a search starts from), never one of the design.
"""

from __future__ import annotations

import itertools
import random

from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, sample_distinct


def _uniform(embed: int, depth: int, heads: int, ratio: float) -> Subnet:
    return Subnet(embed, depth, (ratio,) * depth, (heads,) * depth)


def design_subnets(space: SearchSpace, n: int, seed: int = 0) -> list[Subnet]:
    """The first `n` subnets of the design sequence (fewer only when the space has fewer subnets)."""
    lo_d, hi_d = min(space.depths), max(space.depths)
    lo_h, hi_h = min(space.num_heads), max(space.num_heads)
    lo_r, hi_r = min(space.mlp_ratios), max(space.mlp_ratios)
    out: list[Subnet] = []
    taken: set[tuple] = set()

    def add(subnet: Subnet) -> None:
        if len(out) < n and subnet.key() not in taken:
            taken.add(subnet.key())
            out.append(subnet)

    for e in space.embed_dims:  # 1. extremes
        add(_uniform(e, lo_d, lo_h, lo_r))
        add(_uniform(e, hi_d, hi_h, hi_r))
    depths = itertools.cycle(sorted(space.depths, key=lambda d: (d != (lo_d + hi_d) // 2, d)))
    covered = {(e, lo_h, lo_r) for e in space.embed_dims} | {(e, hi_h, hi_r) for e in space.embed_dims}
    for e, h, r in itertools.product(space.embed_dims, space.num_heads, space.mlp_ratios):  # 2. every block type
        if (e, h, r) not in covered:
            add(_uniform(e, next(depths), h, r))
    rng = random.Random(f"latency-design-{seed}")
    cells = list(itertools.product(space.embed_dims, space.depths))
    misses = 0
    while len(out) < n and misses < 100 * max(n, 1):  # 3. balanced mixed subnets
        rng.shuffle(cells)
        for e, d in cells:
            before = len(out)
            add(Subnet(e, d, tuple(rng.choice(space.mlp_ratios) for _ in range(d)),
                       tuple(rng.choice(space.num_heads) for _ in range(d))))
            misses += len(out) == before
    return out


def heldout_subnets(space: SearchSpace, n: int, exclude: list[Subnet], seed: int = 0) -> list[Subnet]:
    """`n` uniformly drawn subnets, none of them in `exclude` (the fitting set)."""
    return sample_distinct(space, n, f"latency-heldout-{seed}", taken={s.key() for s in exclude})
