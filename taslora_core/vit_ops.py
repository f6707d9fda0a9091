"""ViT math shared by the supernet and the standalone model (AutoFormer's forward, `autoformer.md` 2.2-2.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LN_EPS = 1e-5


def rel_pos_index(grid: int, max_rel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, N) long index tables (rows, columns) for N = grid*grid + 1 tokens, cls at index 0.

    Patch q and patch k get distance k//s - q//s (rows) and k%s - q%s (columns), clamped to
    [-max_rel, max_rel] and shifted by max_rel + 1; every pair involving the cls token uses index 0.
    """
    pos = torch.arange(grid * grid)
    r, c = pos // grid, pos % grid
    dv = (r[None, :] - r[:, None]).clamp(-max_rel, max_rel) + max_rel + 1
    dh = (c[None, :] - c[:, None]).clamp(-max_rel, max_rel) + max_rel + 1
    return F.pad(dv, (1, 0, 1, 0)), F.pad(dh, (1, 0, 1, 0))


def rel_pos_embedding(
    table_v: torch.Tensor, table_h: torch.Tensor, idx_v: torch.Tensor, idx_h: torch.Tensor
) -> torch.Tensor:
    """(N, N, head_dim) relative-position embedding: table_v[idx_v] + table_h[idx_h]."""
    return table_v[idx_v] + table_h[idx_h]


def attention_core(
    qkv: torch.Tensor,
    heads: int,
    head_dim: int,
    rel_k: torch.Tensor | None,
    rel_v: torch.Tensor | None,
) -> torch.Tensor:
    """Multi-head attention from the qkv projection (B, N, 3*heads*head_dim) to (B, N, heads*head_dim).

    Channels are [all q | all k | all v], head-major. With relative positions the key term q.r_k is added to
    the logits (scaled like q.k) and the value term sum_j attn_ij r_v[i,j] to the output, shared by all heads.
    """
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
    scale = head_dim**-0.5
    logits = q @ k.transpose(-2, -1)
    if rel_k is not None:
        # (N, B*h, d) @ (N, d, N) -> (N, B*h, N): each query position i uses its own table slice r_k[i].
        qr = q.permute(2, 0, 1, 3).reshape(n, -1, head_dim) @ rel_k.transpose(1, 2)
        logits = logits + qr.reshape(n, b, heads, n).permute(1, 2, 0, 3)
    attn = (logits * scale).softmax(dim=-1)
    out = attn @ v
    if rel_v is not None:
        av = attn.permute(2, 0, 1, 3).reshape(n, -1, n) @ rel_v  # (N, B*h, d)
        out = out + av.reshape(n, b, heads, head_dim).permute(1, 2, 0, 3)
    return out.transpose(1, 2).reshape(b, n, heads * head_dim)


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
