"""ViT math shared by the supernet and the standalone model (AutoFormer's forward, `autoformer.md` 2.2-2.4).

The attention itself is `taslora_core.rel_pos_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LN_EPS = 1e-5


def axis_rel_index(grid: int, max_rel: int) -> torch.Tensor:
    """(grid, grid) long table row of a (query, key) pair of positions along one grid axis: the distance
    key - query clamped to [-max_rel, max_rel] and shifted by max_rel + 1 (row 0 is the cls token's)."""
    pos = torch.arange(grid)
    return (pos[None, :] - pos[:, None]).clamp(-max_rel, max_rel) + max_rel + 1


def rel_pos_index(grid: int, max_rel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, N) long index tables (rows, columns) for N = grid*grid + 1 tokens, cls at index 0.

    Patch q and patch k get `axis_rel_index` of their grid rows (k//s vs q//s) and of their grid columns
    (k%s vs q%s); every pair involving the cls token uses index 0. The attention
    (`taslora_core.rel_pos_attention`) uses the per-axis tables directly; this is the rule spelled out per pair.
    """
    axis = axis_rel_index(grid, max_rel)
    pos = torch.arange(grid * grid)
    r, c = pos // grid, pos % grid
    return F.pad(axis[r[:, None], r[None, :]], (1, 0, 1, 0)), F.pad(axis[c[:, None], c[None, :]], (1, 0, 1, 0))


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU computed in float32 and cast back, as AutoFormer does."""
    return F.gelu(x.float()).type_as(x)


def embed_tokens(
    patches: torch.Tensor, cls_token: torch.Tensor, pos_embed: torch.Tensor | None
) -> torch.Tensor:
    """(B, E, s, s) patch-conv output -> (B, N, E) tokens with cls prepended and absolute positions added."""
    x = patches.flatten(2).transpose(1, 2)
    x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    if pos_embed is not None:
        x = x + pos_embed
    return x


def pool(x: torch.Tensor, global_pool: bool) -> torch.Tensor:
    """Mean over patch tokens (cls excluded) when global_pool, else the cls token."""
    return x[:, 1:].mean(dim=1) if global_pool else x[:, 0]
