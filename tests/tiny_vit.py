"""A tiny ViT-like model (patch conv, one pre-norm attention block, GELU MLP, mean pool, head) for deploy tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyViT(nn.Module):
    """Patch conv + one attention block (einsum / matmul) + GELU MLP + mean pool + head; `extra_layer` adds a
    residual linear layer, i.e. a structurally different graph."""

    def __init__(self, dim: int = 32, heads: int = 2, patch: int = 4, img: int = 16, classes: int = 10,
                 extra_layer: bool = False):
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (img // patch) ** 2, dim) * 0.02)
        self.ln1, self.ln2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.extra = nn.Linear(dim, dim) if extra_layer else None
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.einsum("bhnd,bhmd->bhnm", q, k) * (d // self.heads) ** -0.5
        x = x + self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        if self.extra is not None:
            x = x + self.extra(x)
        return self.head(self.norm(x).mean(1))
