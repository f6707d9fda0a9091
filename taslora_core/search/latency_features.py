"""What a fitted latency model sees of a subnet: per-block features (work that scales with the block's shapes) and
per-block-type counts (the lookup terms), plus the weighted least squares both are fitted with.

Blocks run one after another, so a subnet's latency is a fixed stem/head cost (patch embedding, norm, head: it
depends on the embed dim only) plus the sum of its blocks' costs, and a block's cost depends only on its own
heads and MLP ratio and the global embed dim. Two descriptions of that cost:

- features (`FEATURES`): a few physical quantities summed over the blocks (the number of blocks: a fixed
  per-block cost of launching its operators; GEMM multiply-adds; attention multiply-adds; per-head softmax
  work; element-wise work on embed- and hidden-wide activations) plus the stem's; one coefficient each,
  shared by every block type, so a handful of measurements pins them down;
- lookup (`block_type` / `stem_type`): one cost per block type (embed, heads, MLP ratio) and one stem cost per
  embed dim; exact for any efficiency effect of a particular shape, but it needs every type measured.

`taslora_core.search.latency_fit` combines them (the lookup as a ridge-shrunk correction of the features).
"""

from __future__ import annotations

import numpy as np

from taslora_core.slicing import block_dims
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet

FEATURES = ("const", "embed", "blocks", "gemm_mmacs", "attn_mmacs", "softmax_k", "elementwise_k")
"""Feature names, in vector order (units: multiply-adds in millions, element counts in thousands, per image)."""


def feature_vector(space: SearchSpace, subnet: Subnet) -> np.ndarray:
    """The FEATURES of `subnet` (one image): stem terms, then the per-block terms summed over its blocks."""
    n, e = space.num_tokens, subnet.embed_dim
    attn_terms = 4 if space.relative_position else 2  # q.k, attn.v (+ q.r_k, attn.r_v)
    gemm = attn = softmax = elementwise = 0.0
    for b in range(subnet.depth):
        d = block_dims(space, subnet, b)
        gemm += n * (e * 3 * d.qk + d.qk * e + 2 * e * d.hidden)
        attn += attn_terms * n * n * d.qk
        softmax += subnet.num_heads[b] * n * n
        elementwise += n * (4 * e + d.hidden)  # two LayerNorms + two residual adds, GELU on the hidden width
    return np.array([1.0, float(e), float(subnet.depth), gemm / 1e6, attn / 1e6, softmax / 1e3, elementwise / 1e3])


def block_type(embed: int, heads: int, ratio: float) -> str:
    """Name of a block type in the lookup: 'e192-h3-r3.5'."""
    return f"e{int(embed)}-h{int(heads)}-r{float(ratio):g}"


def stem_type(embed: int) -> str:
    """Name of a stem/head type in the lookup: 'e192'."""
    return f"e{int(embed)}"


def lookup_names(space: SearchSpace) -> list[str]:
    """Every lookup term of the space: one stem per embed dim, then one block type per (embed, heads, ratio)."""
    stems = [stem_type(e) for e in space.embed_dims]
    blocks = [block_type(e, h, r) for e in space.embed_dims for h in space.num_heads for r in space.mlp_ratios]
    return stems + blocks


def lookup_vector(space: SearchSpace, subnet: Subnet, names: list[str] | None = None) -> np.ndarray:
    """Counts of each lookup term in `subnet` (its stem once, each block type as often as it occurs)."""
    names = names if names is not None else lookup_names(space)
    index = {name: i for i, name in enumerate(names)}
    out = np.zeros(len(names))
    out[index[stem_type(subnet.embed_dim)]] += 1.0
    for h, r in zip(subnet.num_heads, subnet.mlp_ratios):
        out[index[block_type(subnet.embed_dim, h, r)]] += 1.0
    return out


def weighted_lstsq(x: np.ndarray, y: np.ndarray, penalty: np.ndarray | None = None) -> np.ndarray:
    """Coefficients c minimising sum(((x @ c - y) / y)^2) + sum(penalty * c^2): least squares on the relative
    error (timing noise is proportional to the latency), with an optional ridge penalty per coefficient.
    Columns are normalised before solving (numpy's SVD least squares; a rank-deficient system gets its
    min-norm solution)."""
    y = np.asarray(y, dtype=float)
    xw = np.asarray(x, dtype=float) / y[:, None]
    yw = np.ones_like(y)
    norms = np.linalg.norm(xw, axis=0)
    norms[norms == 0] = 1.0
    xs = xw / norms
    if penalty is not None and np.any(penalty > 0):
        # c = cs / norms, so penalty * c^2 = (sqrt(penalty) / norms * cs)^2: one extra row per coefficient
        xs = np.vstack([xs, np.diag(np.sqrt(np.asarray(penalty, dtype=float)) / norms)])
        yw = np.concatenate([yw, np.zeros(x.shape[1])])
    cs, *_ = np.linalg.lstsq(xs, yw, rcond=None)
    return cs / norms
