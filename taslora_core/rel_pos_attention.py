"""Multi-head attention with AutoFormer's 2-D relative positions, computed from the small tables.

AutoFormer (`autoformer.md` 2.3-2.4) adds to every logit a key term q_i . r_k[i, j] and to every output a value
term sum_j a_ij r_v[i, j], where r[i, j] = table_v[idx_v[i, j]] + table_h[idx_h[i, j]] comes from two small
tables (rows: relative distance along the grid's rows / columns, clamped; row 0: every pair with the cls token).
Its reference code materialises r as (N, N, head_dim) tensors and multiplies them per query; here nothing of
that size is built (but for the tiny grids below).

With R rows per table, A = q [key_v; key_h]^T holds every query's product with every key-table row (N x 2R per
head), and the attention's sums S[i, c] = sum_j a_ij onehot_c(j) over a few per-key columns c give the value
term:

- key term: q_i . r_k[i, j] = A[i, idx_v(ri, rj)] + A[i, R + idx_h(ci, cj)] for patches, A[i, 0] + A[i, R] for the
  cls key. That is the dot product of [q_i | Q[i]] with [k_j | onehot(j)], where Q[i, c] = A[i, key_index[i, c]]
  (a constant index per query and column; A's extra last column is 0, from a zero row of the key table) and
  onehot(j) = [onehot(rj) | cls | cls | onehot(cj) | 1 | 0 ...]: the key term enters the fused attention as
  extra columns of q and k.
- value term: sum_j a_ij r_v[i, j] = P[i] [value_v; value_h] with P[i, b] the attention of query i on the keys in
  relative bin b, P[i, b] = sum of S[i, c] over the columns c in that bin (value_index: one column per bin, m
  columns where the clamp puts m grid positions into one bin, a column of zeros where none), S from the same
  one-hot columns appended to v and returned by the fused attention.
- the cls query uses row 0 with every key: its key term is the same for all keys (a softmax shift, left out: its
  Q row is 0) and its value term is table_v[0] + table_h[0]: its bins 0 and R read the all-ones column (its
  attention sums to 1).

So one fused `scaled_dot_product_attention` on q, k, v widened by 2s + 4 columns (s = grid side, rounded up for
alignment) gives AutoFormer's attention; the other extra arithmetic is two matmuls of N x 2R x head_dim per head
and two element gathers with constant indices. An ONNX export writes the same math with MatMul / Softmax,
GatherElements (constant, non-negative indices: supported by onnxruntime and TensorRT's ONNX parser), Concat,
Expand and Reshape, on static shapes but the batch: no scatter, no data-dependent shape.

Grids of at most PER_QUERY_MAX_TOKENS tokens (fmnist's 4 x 4) are cheaper in the per-query form at large
batches, whose (N, N, head_dim) tables are tiny there; `rel_pos_buffers` picks the form per grid.
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
query, its (N, head_dim) key and value tables (tiny at this size) in matmuls batched over batch x heads.
Measured (attention alone, one thread, fmnist's 17 tokens, 3 heads of 32, ratio to plain SDPA from interleaved
pairs): the bins form 3.4x / 2.6x / 2.6x at batch 1 / 8 / 64, the per-query form 6.3x / 3.3x / 2.1x; training
runs at batch 64 and more, so the per-query form stays there. At 197 tokens the bins form is far faster."""


class RelTables(NamedTuple):
    """One attention's relative-position tables, each (rows, head_dim): key side (v, h), value side (v, h)."""

    key_v: torch.Tensor
    key_h: torch.Tensor
    value_v: torch.Tensor
    value_h: torch.Tensor


class RelPosBuffers(NamedTuple):
    """Constants of one grid (the modules hold them as non-persistent buffers).

    one_hot: (N, width) per-key columns appended to k and v: [onehot(grid row) | cls | cls | onehot(grid column)
    | 1 | 0 ...], width = 2s + 4 rounded up so that head_dim + width is a multiple of 8;
    key_index: (N, width) column of A = q [key_v; key_h; 0]^T (2R + 1 columns) that each query's extra q column
    holds;
    value_index: (N, m * 2R) column of the attention sums (one per one-hot column) that holds each query's
    attention on relative bin b, m columns per bin (m = 1 unless the clamp merges grid positions), bin-major
    within each of the m blocks; the column of zeros where a bin is empty;
    pair_index: (2, N, N) rows of cat(key_v, key_h) per (query, key) pair for grids of at most
    PER_QUERY_MAX_TOKENS tokens (`vit_ops.rel_pos_index`), (2, 0, 0) above.
    """

    one_hot: torch.Tensor
    key_index: torch.Tensor
    value_index: torch.Tensor
    pair_index: torch.Tensor


def rel_pos_buffers(grid: int, max_rel: int, head_dim: int) -> RelPosBuffers:
    """The constants of a `grid` x `grid` patch grid with cls at token 0, tables of 2*max_rel + 2 rows."""
    s, rows = grid, 2 * max_rel + 2
    n, width = s * s + 1, math.ceil((head_dim + 2 * s + 4) / _ALIGN) * _ALIGN - head_dim
    cls_v, cls_h, ones, zeros = s, s + 1, 2 * s + 2, 2 * s + 3  # columns past the grid rows' one-hots
    patches = torch.arange(s * s)
    one_hot = torch.zeros(n, width)
    one_hot[1 + patches, patches // s] = 1.0
    one_hot[0, [cls_v, cls_h]] = 1.0
    one_hot[1 + patches, s + 2 + patches % s] = 1.0
    one_hot[:, ones] = 1.0

    # Per query, as plain numbers (also where the supernet is built on the meta device): the column of A behind
    # each extra q column, and the sums' columns in each relative bin. A's last column (2R), from the key table's
    # zero row, fills the cls query's row (its key term is a softmax shift) and the ones/zeros/alignment columns.
    with torch.device("cpu"):
        axis = axis_rel_index(s, max_rel).tolist()  # [query row][key row] -> table row; the same rule per column
    key_index = [[2 * rows] * width]
    bins: list[list[list[int]]] = [[[] for _ in range(2 * rows)] for _ in range(n)]
    bins[0][0], bins[0][rows] = [ones], [ones]
    for i in range(1, n):
        ri, ci = (i - 1) // s, (i - 1) % s
        key_index.append([*axis[ri], 0, rows, *(rows + t for t in axis[ci])] + [2 * rows] * (width - 2 * s - 2))
        bins[i][0], bins[i][rows] = [cls_v], [cls_h]
        for k in range(s):
            bins[i][axis[ri][k]].append(k)
            bins[i][rows + axis[ci][k]].append(s + 2 + k)
    m = max(len(cols) for query in bins for cols in query)
    value_index = torch.tensor([[[cols[j] if j < len(cols) else zeros for cols in query] for j in range(m)]
                                for query in bins], dtype=torch.long)  # (N, m, 2R)
    if n <= PER_QUERY_MAX_TOKENS:
        idx_v, idx_h = rel_pos_index(s, max_rel)
        pair_index = torch.stack([idx_v, idx_h + rows])
    else:
        pair_index = torch.zeros(2, 0, 0, dtype=torch.long)
    return RelPosBuffers(one_hot, torch.tensor(key_index, dtype=torch.long), value_index.flatten(1), pair_index)


def attention(
    qkv: torch.Tensor, heads: int, head_dim: int, tables: RelTables | None, buffers: RelPosBuffers | None
) -> torch.Tensor:
    """Multi-head attention from the qkv projection (B, N, 3*heads*head_dim) to (B, N, heads*head_dim).

    Channels of qkv are [all q | all k | all v], head-major; the scale is head_dim**-0.5. With `tables` (and the
    grid's `buffers`) the relative positions are added as AutoFormer does, shared by all heads.
    """
    n = qkv.shape[1]
    qkv5 = qkv.view(-1, n, 3, heads, head_dim)
    q, kv = qkv5.permute(2, 0, 3, 1, 4).split([1, 2])  # (1 and 2, B, h, N, d) views
    q = q[0]
    scale = head_dim**-0.5
    if tables is None:
        return _attend(q, kv, None, None, scale)[0].transpose(1, 2).reshape(-1, n, heads * head_dim)
    if buffers is None:
        raise ValueError("relative-position tables need the grid's buffers (rel_pos_buffers)")
    if buffers.pair_index.numel():  # a small grid (PER_QUERY_MAX_TOKENS)
        out = _per_query(q, *kv, torch.cat(tables).to(qkv.dtype), buffers.pair_index, scale)
    else:
        out = _bins(q, kv, tables, buffers, scale)
    return out.reshape(-1, n, heads * head_dim)


def _bins(q: torch.Tensor, kv: torch.Tensor, tables: RelTables, buffers: RelPosBuffers, scale: float) -> torch.Tensor:
    """The bins form (module docstring): (B, N, h, d)."""
    b, heads, n, head_dim = q.shape
    key_table = torch.cat([tables.key_v, tables.key_h, tables.key_v.new_zeros(1, head_dim)]).to(q.dtype)
    value_table = torch.cat([tables.value_v, tables.value_h]).to(q.dtype)
    one_hot = buffers.one_hot.to(q.dtype)
    q_extra = (q @ key_table.T).gather(-1, buffers.key_index.expand(b, heads, n, one_hot.shape[1]))
    out, sums = _attend(q, kv, q_extra, one_hot, scale)
    bins = sums.gather(-1, buffers.value_index.expand(b, heads, n, buffers.value_index.shape[1]))
    columns_per_bin = buffers.value_index.shape[1] // value_table.shape[0]  # > 1 only where the clamp merges
    if columns_per_bin > 1:
        value_table = value_table.repeat(columns_per_bin, 1)
    out = torch.baddbmm(out.reshape(b * heads, n, head_dim), bins.reshape(b * heads, n, -1),
                        value_table.expand(b * heads, -1, -1))
    return out.view(b, heads, n, head_dim).transpose(1, 2)


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
    q: torch.Tensor, kv: torch.Tensor, q_extra: torch.Tensor | None, one_hot: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(scale * (q k^T + q_extra one_hot^T)) applied to v and to one_hot: (output, attention sums), with
    k, v = kv (2, B, h, N, d).

    Run as one fused kernel on q, k, v widened by the extra columns (k and v in one copy). An ONNX export writes
    the same math as plain MatMul / Softmax on static shapes instead (the exporter's lowering of the fused call
    reshapes through the graph's runtime shape, which loses the static dims).
    """
    if not torch.onnx.is_in_onnx_export():
        if q_extra is None:
            return F.scaled_dot_product_attention(q, kv[0], kv[1], scale=scale), None
        kv = torch.cat([kv, one_hot.expand(*kv.shape[:-1], one_hot.shape[-1])], -1)
        out = F.scaled_dot_product_attention(torch.cat([q, q_extra], -1), kv[0], kv[1], scale=scale)
        return out[..., : q.shape[-1]], out[..., q.shape[-1] :]
    k, v = kv.unbind(0)
    logits = q @ k.transpose(-2, -1)
    if q_extra is not None:
        logits = logits + q_extra @ one_hot.T
    attn = (logits * scale).softmax(dim=-1)
    return attn @ v, (attn @ one_hot if one_hot is not None else None)
