"""Multi-head attention with AutoFormer's 2-D relative positions, computed from the small tables.

AutoFormer (`autoformer.md` 2.3-2.4) adds to every logit a key term q_i . r_k[i, j] and to every output a value
term sum_j a_ij r_v[i, j], where r[i, j] = table_v[idx_v[i, j]] + table_h[idx_h[i, j]] comes from two small
tables (rows: relative distance along the grid's rows / columns, clamped; row 0: every pair with the cls token).
Its reference code materialises r as (N, N, head_dim) tensors and multiplies them per query; here nothing of
that size is built (but for the tiny grids below).

For a patch query i at grid cell (ri, ci) and a patch key j at (rj, cj), only the row pair (ri, rj) picks the
row of table_v and only the column pair (ci, cj) the row of table_h. With the "window" of a query row,
W_v[ri][rj] = table_v[idx(ri, rj)] (and W_h[ci][cj] per query column; (s, s, d) gathers of parameter rows):

- key term: q_i . r_k[i, j] = A_v[i, rj] + A_h[i, cj] + [j = cls] c_i, with A_v[i] = q_i W_v[ri]^T,
  A_h[i] = q_i W_h[ci]^T (one batched matmul whose batch is the query's grid row, then column) and
  c_i = q_i . table_v[0] + q_i . table_h[0]. That is the dot product of [q_i | A_v[i] | c_i | A_h[i]] with
  [k_j | onehot(rj) | [j = cls] | onehot(cj)]: the key term enters the fused attention as extra columns of q, k.
- value term: sum_j a_ij r_v[i, j] = S_v[i] W_v[ri] + S_h[i] W_h[ci] + a_i0 (table_v[0] + table_h[0]), with
  S_v[i, rj] the attention of query i summed over the keys in grid row rj (S_h per grid column) and a_i0 its
  attention on the cls key: the same one-hot columns appended to v, returned by the fused attention.
- the cls query uses row 0 with every key: its key term is the same for all keys (a softmax shift, left out)
  and its value term is table_v[0] + table_h[0] (its attention sums to 1).

So one fused `scaled_dot_product_attention` on q, k, v widened by about 2s + 2 columns (s = grid side, rounded
up for alignment) gives AutoFormer's attention; the other extra arithmetic is two batched matmuls of
N x (s + 2) x head_dim per head. An ONNX export writes the same math with MatMul / Softmax, and otherwise uses
Transpose, Reshape, Concat, Pad, Slice, Add and a Gather of parameter rows, on static shapes but the batch: no
scatter, no element-wise gather, no data-dependent shape.

Grids of at most PER_QUERY_MAX_TOKENS tokens (fmnist's 4 x 4) are cheaper in the per-query form, whose
(N, N, head_dim) tables are tiny there; `rel_pos_buffers` picks the form per grid.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from taslora_core.vit_ops import axis_rel_index, rel_pos_index

__all__ = ["RelPosBuffers", "RelTables", "rel_pos_buffers", "attention"]

_ALIGN = 8  # width multiple of the widened q/k/v: what the fused CUDA kernels want

PER_QUERY_MAX_TOKENS = 32
"""Grids of up to this many tokens (5 x 5 patches + cls; fmnist's 4 x 4) take the per-query form instead: per
query, its (N, head_dim) key and value tables (tiny at this size) in matmuls batched over batch x heads. There it
is the cheaper form. Measured (attention alone, CPU time of one thread): at 17 tokens it is 1.4x faster than the
windows from batch 64 up and equal at batch 8 (copying q, k, v into their widened form costs more there than the
whole relative term); at 50 tokens the windows are 3x faster at batch 1 and 1.5x slower at batch 32; at 101 and
197 tokens the windows are faster at every batch measured (1.7x and 3x at batch 16 and 8)."""


class RelTables(NamedTuple):
    """One attention's relative-position tables, each (rows, head_dim): key side (v, h), value side (v, h)."""

    key_v: torch.Tensor
    key_h: torch.Tensor
    value_v: torch.Tensor
    value_h: torch.Tensor


class RelPosBuffers(NamedTuple):
    """Constants of one grid (the modules hold them as non-persistent buffers).

    table_index: rows of cat(key_v, key_h, value_v, value_h) forming the windows (see the module docstring),
    2s windows of s + 2 rows for each side, then the value side's two cls rows;
    one_hot: (N, width) per-key columns appended to k and v: [onehot(grid row) | cls | cls | onehot(grid column)
    | 0 ...], width = 2s + 4 rounded up so that head_dim + width is a multiple of 8;
    pair_index: (2, N, N) rows of cat(key_v, key_h) per (query, key) pair for grids of at most
    PER_QUERY_MAX_TOKENS tokens (`vit_ops.rel_pos_index`), (2, 0, 0) above.
    """

    table_index: torch.Tensor
    one_hot: torch.Tensor
    pair_index: torch.Tensor


def rel_pos_buffers(grid: int, max_rel: int, head_dim: int) -> RelPosBuffers:
    """The constants of a `grid` x `grid` patch grid with cls at token 0, tables of 2*max_rel + 2 rows."""
    s, rows = grid, 2 * max_rel + 2
    win = axis_rel_index(s, max_rel)  # (s, s): table row of (query row, key row); the same rule per column
    cls_rows = torch.tensor([[0, rows]]).expand(s, 2)  # table_v[0] and table_h[0] (of the cat), per window
    # Windows of s + 2 rows, grouped by query row (v) then by query column (h), key side then value side. The
    # v windows end with the two cls rows; the h windows with two filler rows (their one-hot columns are 0).
    key = torch.cat([torch.cat([win, cls_rows], 1), torch.cat([win, win[:, :1].expand(s, 2)], 1) + rows])
    table_index = torch.cat([key.flatten(), (key + 2 * rows).flatten(), torch.tensor([2 * rows, 3 * rows])])

    width = math.ceil((head_dim + 2 * s + 4) / _ALIGN) * _ALIGN - head_dim
    patches = torch.arange(s * s)
    one_hot = torch.zeros(s * s + 1, width)
    one_hot[1 + patches, patches // s] = 1.0
    one_hot[0, s : s + 2] = 1.0
    one_hot[1 + patches, s + 2 + patches % s] = 1.0
    if s * s + 1 <= PER_QUERY_MAX_TOKENS:
        idx_v, idx_h = rel_pos_index(s, max_rel)
        pair_index = torch.stack([idx_v, idx_h + rows])
    else:
        pair_index = torch.zeros(2, 0, 0, dtype=torch.long)
    return RelPosBuffers(table_index, one_hot, pair_index)


def attention(
    qkv: torch.Tensor, heads: int, head_dim: int, tables: RelTables | None, buffers: RelPosBuffers | None
) -> torch.Tensor:
    """Multi-head attention from the qkv projection (B, N, 3*heads*head_dim) to (B, N, heads*head_dim).

    Channels of qkv are [all q | all k | all v], head-major; the scale is head_dim**-0.5. With `tables` (and the
    grid's `buffers`) the relative positions are added as AutoFormer does, shared by all heads.
    """
    n = qkv.shape[1]
    qkv5 = qkv.view(-1, n, 3, heads, head_dim)
    q, k, v = qkv5.permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d) views
    scale = head_dim**-0.5
    if tables is None:
        return _attend(q, k, v, None, None, scale)[0].transpose(1, 2).reshape(-1, n, heads * head_dim)
    if buffers is None:
        raise ValueError("relative-position tables need the grid's buffers (rel_pos_buffers)")
    table = torch.cat(tables).to(qkv.dtype)  # (4 rows, d): key v, key h, value v, value h
    if buffers.pair_index.numel():  # a small grid (PER_QUERY_MAX_TOKENS)
        out = _per_query(q, k, v, table, buffers.pair_index, scale)
    else:
        out = _windows(qkv5, q, k, v, table, buffers, scale)
    return out.reshape(-1, n, heads * head_dim)


def _windows(
    qkv5: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    buffers: RelPosBuffers, scale: float,
) -> torch.Tensor:
    """The window form (module docstring): (B, N, h, d), contiguous."""
    n, heads, head_dim = qkv5.shape[1], qkv5.shape[3], qkv5.shape[4]
    one_hot = buffers.one_hot.to(table.dtype)
    s, width = math.isqrt(n - 1), one_hot.shape[1]
    w = s + 2
    windows = table.index_select(0, buffers.table_index)
    key_windows = windows[: 2 * s * w].view(2 * s, w, head_dim)  # (group, window row, d): s by row, s by column
    value_windows = windows[2 * s * w : 4 * s * w].view(2 * s, w, head_dim)

    # Key term: one bmm whose batch is the query group: s query rows (v table), then s query columns (h table).
    qg = qkv5[:, 1:, 0].unflatten(1, (s, s))  # (B, s_row, s_col, h, d)
    groups = torch.stack([qg.permute(1, 0, 2, 3, 4), qg.permute(2, 0, 1, 3, 4)]).view(2 * s, -1, head_dim)
    a = torch.bmm(groups, key_windows.transpose(1, 2)).view(2, s, -1, s, heads, w)
    a_v, a_h = a[0].permute(1, 3, 0, 2, 4), a[1].permute(1, 3, 2, 0, 4)  # (B, h, s_row, s_col, w)
    # cls query: zeros (its key term is a constant shift); columns past 2w: zeros (alignment)
    q_extra = F.pad(torch.cat([a_v, a_h], -1).flatten(2, 3), (0, width - 2 * w, 1, 0))
    out, sums = _attend(q, k, v, q_extra, one_hot, scale)

    # Value term from the attention sums per grid row / column, the same grouping.
    sums = sums[:, :, 1:].unflatten(2, (s, s))  # (B, h, s_row, s_col, width)
    groups = torch.stack([sums[..., :w].permute(2, 0, 1, 3, 4), sums[..., w : 2 * w].permute(3, 0, 1, 2, 4)])
    r = torch.bmm(groups.view(2 * s, -1, w), value_windows).view(2, s, -1, heads, s, head_dim)
    rel = (r[0].permute(1, 0, 3, 2, 4) + r[1].permute(1, 3, 0, 2, 4)).reshape(-1, s * s, heads, head_dim)
    cls_value = windows[4 * s * w :].sum(0)  # table_v[0] + table_h[0]: the cls query's value term
    out = out.transpose(1, 2)  # (B, N, h, d)
    return torch.cat([out[:, :1] + cls_value, rel + out[:, 1:]], 1)


def _per_query(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, pair_index: torch.Tensor, scale: float
) -> torch.Tensor:
    """The per-query form of small grids: r[i, j] = table_v[idx_v[i, j]] + table_h[idx_h[i, j]] as (N, N, d)
    tables, q_i . r_k[i] and a_i . r_v[i] as N matmuls batched over batch x heads. (B, N, h, d)."""
    b, heads, n, head_dim = q.shape
    half = table.shape[0] // 2  # the value tables follow the key tables
    rel_k = table[pair_index[0]] + table[pair_index[1]]  # (N, N, d)
    rel_v = table[pair_index[0] + half] + table[pair_index[1] + half]
    qr = q.permute(2, 0, 1, 3).reshape(n, -1, head_dim) @ rel_k.transpose(1, 2)  # (N, B*h, N)
    logits = q @ k.transpose(-2, -1) + qr.view(n, -1, heads, n).permute(1, 2, 0, 3)
    attn = (logits * scale).softmax(dim=-1)
    av = attn.permute(2, 0, 1, 3).reshape(n, -1, n) @ rel_v  # (N, B*h, d)
    return (attn @ v).transpose(1, 2) + av.view(n, -1, heads, head_dim).transpose(0, 1)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_extra: torch.Tensor | None, one_hot: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(scale * (q k^T + q_extra one_hot^T)) applied to v and to one_hot: (output, attention sums).

    Run as one fused kernel on q, k, v widened by the extra columns. An ONNX export writes the same math as
    plain MatMul / Softmax on static shapes instead (the exporter's lowering of the fused call reshapes through
    the graph's runtime shape, which loses the static dims).
    """
    if not torch.onnx.is_in_onnx_export():
        if q_extra is None:
            return F.scaled_dot_product_attention(q, k, v, scale=scale), None
        extra = one_hot.expand(*k.shape[:-1], one_hot.shape[-1])
        out = F.scaled_dot_product_attention(
            torch.cat([q, q_extra], -1), torch.cat([k, extra], -1), torch.cat([v, extra], -1), scale=scale
        )
        return out[..., : v.shape[-1]], out[..., v.shape[-1] :]
    logits = q @ k.transpose(-2, -1)
    if q_extra is not None:
        logits = logits + q_extra @ one_hot.T
    attn = (logits * scale).softmax(dim=-1)
    return attn @ v, (attn @ one_hot if one_hot is not None else None)
