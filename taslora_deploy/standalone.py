"""A plain ViT with exactly one subnet's shapes, materialised from a supernet (optionally with folded experts).

No slicing happens at run time: every layer is an ordinary `nn.Conv2d` / `nn.Linear` / `nn.LayerNorm` of
the subnet's size and the relative-position index tables are precomputed buffers, so the model exports to
ONNX/TensorRT as a static graph with a dynamic batch axis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from taslora_core import vit_ops
from taslora_core.checkpoint import CheckpointError, atomic_save_safetensors, atomic_write_json, check_state_keys
from taslora_core.slicing import Deltas, block_dims
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_core.supernet import RelPosTables

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"


class Attention(nn.Module):
    """Fused-qkv multi-head attention with AutoFormer's 2-D relative positions on keys and values."""

    def __init__(self, embed: int, heads: int, head_dim: int, rel_rows: int | None) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(embed, 3 * heads * head_dim)
        if rel_rows is not None:
            self.rel_pos_embed_k = RelPosTables(rel_rows, head_dim)
            self.rel_pos_embed_v = RelPosTables(rel_rows, head_dim)
        self.proj = nn.Linear(heads * head_dim, embed)
        self.relative = rel_rows is not None

    def forward(self, x: torch.Tensor, idx_v: torch.Tensor, idx_h: torch.Tensor) -> torch.Tensor:
        rel_k = rel_v = None
        if self.relative:
            k, v = self.rel_pos_embed_k, self.rel_pos_embed_v
            rel_k = vit_ops.rel_pos_embedding(k.embeddings_table_v, k.embeddings_table_h, idx_v, idx_h)
            rel_v = vit_ops.rel_pos_embedding(v.embeddings_table_v, v.embeddings_table_h, idx_v, idx_h)
        return self.proj(vit_ops.attention_core(self.qkv(x), self.heads, self.head_dim, rel_k, rel_v))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, embed: int, heads: int, head_dim: int, hidden: int, rel_rows: int | None) -> None:
        super().__init__()
        self.attn = Attention(embed, heads, head_dim, rel_rows)
        self.attn_layer_norm = nn.LayerNorm(embed, eps=vit_ops.LN_EPS)
        self.ffn_layer_norm = nn.LayerNorm(embed, eps=vit_ops.LN_EPS)
        self.fc1 = nn.Linear(embed, hidden)
        self.fc2 = nn.Linear(hidden, embed)

    def forward(self, x: torch.Tensor, idx_v: torch.Tensor, idx_h: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_layer_norm(x), idx_v, idx_h)
        return x + self.fc2(vit_ops.gelu(self.fc1(self.ffn_layer_norm(x))))


class StandaloneViT(nn.Module):
    """The ViT of one subnet. Parameter names match `slicing.sliced_state`."""

    def __init__(self, space: SearchSpace, subnet: Subnet) -> None:
        super().__init__()
        subnet.check_fits(space)
        self.space, self.subnet = space, subnet
        e = subnet.embed_dim
        rel_rows = space.rel_table_rows if space.relative_position else None
        if space.abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, space.num_tokens, e))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(space.in_chans, e, space.patch_size, space.patch_size)
        self.blocks = nn.ModuleList(
            Block(e, d.heads, d.head_dim, d.hidden, rel_rows)
            for d in (block_dims(space, subnet, b) for b in range(subnet.depth))
        )
        self.norm = nn.LayerNorm(e, eps=vit_ops.LN_EPS)
        self.head = nn.Linear(e, space.num_classes)
        idx_v, idx_h = vit_ops.rel_pos_index(space.img_size // space.patch_size, space.max_relative_position)
        self.register_buffer("rel_idx_v", idx_v, persistent=False)
        self.register_buffer("rel_idx_h", idx_h, persistent=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (B, E)."""
        h = vit_ops.embed_tokens(self.patch_embed.proj(x), self.cls_token, getattr(self, "pos_embed", None))
        for block in self.blocks:
            h = block(h, self.rel_idx_v, self.rel_idx_h)
        return vit_ops.pool(self.norm(h), self.space.global_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images (B, C, H, W)."""
        return self.head(self.forward_features(x))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return (self.space.in_chans, self.space.img_size, self.space.img_size)


def materialize(supernet: nn.Module, subnet: Subnet, deltas: Deltas | None = None) -> StandaloneViT:
    """A standalone ViT holding `subnet`'s slices of `supernet` (plus folded `deltas`), loaded strictly."""
    model = StandaloneViT(supernet.space, subnet)
    with torch.no_grad():
        tensors = {k: v.detach().clone() for k, v in supernet.subnet_tensors(subnet, deltas).items()}
    model.load_state_dict(tensors, strict=True)
    ref = next(supernet.parameters())
    return model.to(device=ref.device, dtype=ref.dtype).eval()


def save_standalone(directory: str | Path, model: StandaloneViT, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` + `config.json` (space, subnet, and `extra` such as routing weights)."""
    directory = Path(directory)
    atomic_save_safetensors(directory / MODEL_WEIGHTS, model.state_dict(), metadata={"format": "taslora-standalone"})
    config = {
        "format": "taslora-standalone",
        "space": model.space.to_dict(),
        "subnet": model.subnet.to_dict(),
        "input_shape": list(model.input_shape),
        **(extra or {}),
    }
    atomic_write_json(directory / MODEL_CONFIG, config)
    return directory


def load_standalone(directory: str | Path, device: str | torch.device = "cpu") -> StandaloneViT:
    """Load a model written by `save_standalone` (or `taslora export`) in one call."""
    directory = Path(directory)
    weights, config_path = directory / MODEL_WEIGHTS, directory / MODEL_CONFIG
    if not weights.exists() or not config_path.exists():
        raise CheckpointError(
            f"{directory} holds no standalone model (needs {MODEL_WEIGHTS} and {MODEL_CONFIG}); run `taslora export`"
        )
    config = json.loads(config_path.read_text())
    model = StandaloneViT(SearchSpace.from_dict(config["space"]), Subnet.from_dict(config["subnet"]))
    state = load_file(str(weights))
    check_state_keys(model.state_dict(), state, str(weights))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
