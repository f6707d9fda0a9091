"""Parameter and FLOPs counting of subnets.

- `params` counts the elements of every sliced tensor, exactly AutoFormer's `get_sampled_params_numel`; it
  uses `slicing.sliced_state` on meta tensors, so it can never disagree with what the model actually slices.
- `flops(counter="autoformer")` reproduces AutoFormer's `get_complexity(sequence_length=num_patches)`:
  multiply-adds, with its quirks (n = seq + 2 inside blocks, head counted per token, heuristic rel-pos term).
  This is what `taslora search --flops` constrains by default.
- `flops(counter="macs")` is the true multiply-accumulate count of the materialised model for one image:
  patch conv, qkv, q.k, q.r_k, attn.v, attn.r_v, proj, fc1, fc2 and the head once. Norms, softmax, GELU and
  additions are not counted (as in torch's FlopCounterMode, which counts 2 FLOPs per MAC).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from taslora_core.slicing import block_dims, sliced_state
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet

COUNTERS = ("autoformer", "macs")


@lru_cache(maxsize=16)
def _meta_params(space: SearchSpace) -> dict[str, torch.Tensor]:
    from taslora_core.supernet import Supernet

    with torch.device("meta"):
        model = Supernet(space)
    return dict(model.named_parameters())


def params(space: SearchSpace, subnet: Subnet) -> int:
    """Number of parameters of `subnet`: elements of every sliced tensor (rel-pos tables, cls, pos included)."""
    subnet.check_fits(space)
    return sum(t.numel() for t in sliced_state(_meta_params(space), space, subnet).values())


def flops(space: SearchSpace, subnet: Subnet, counter: str = "autoformer") -> float:
    """FLOPs of `subnet` for one image: AutoFormer's `get_complexity` ('autoformer') or true MACs ('macs')."""
    subnet.check_fits(space)
    if counter == "autoformer":
        return _autoformer_complexity(space, subnet)
    if counter == "macs":
        return float(_true_macs(space, subnet))
    raise ValueError(f"unknown FLOPs counter '{counter}'; choose one of {', '.join(COUNTERS)}")


def _autoformer_complexity(space: SearchSpace, subnet: Subnet) -> float:
    e = subnet.embed_dim
    seq = space.num_patches
    n = seq + 2  # AutoFormer adds the cls token twice on the way into the blocks
    total = e + seq * space.in_chans * space.patch_size**2 * e  # patch conv (bias counted once)
    total += (seq + 1) * e / 2  # pos_embed addition
    for b in range(subnet.depth):
        d = block_dims(space, subnet, b)
        total += 2 * n * e  # two LayerNorms
        total += n * 3 * d.qk * e  # qkv
        total += 2 * n * n * d.qk  # q.k and attn.v
        total += n * d.qk * e  # proj
        total += 2 * n * e * d.hidden  # fc1 + fc2
        if space.relative_position:
            total += 2 * space.max_relative_position * n * n + n * n / 2 + n * d.qk / 2
    total += (seq + 1) * e * space.num_classes  # the head, counted once per token
    return float(total)


def _true_macs(space: SearchSpace, subnet: Subnet) -> int:
    e = subnet.embed_dim
    n = space.num_tokens
    total = space.num_patches * space.in_chans * space.patch_size**2 * e
    for b in range(subnet.depth):
        d = block_dims(space, subnet, b)
        attn_terms = 4 if space.relative_position else 2  # q.k, attn.v (+ q.r_k, attn.r_v)
        total += n * e * 3 * d.qk + attn_terms * n * n * d.qk + n * d.qk * e + 2 * n * e * d.hidden
    total += e * space.num_classes
    return total


def parse_amount(text: str | float | int) -> float:
    """Parse '1.3G', '6M', '500K', '2e9' into a number; raises ValueError with the accepted forms."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    try:
        if s and s[-1] in scale:
            return float(s[:-1]) * scale[s[-1]]
        return float(s)
    except ValueError:
        raise ValueError(f"cannot read '{text}' as an amount; use a number with an optional K/M/G suffix, e.g. 1.3G") from None


def format_amount(value: float) -> str:
    """1.344e9 -> '1.344G'."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3f}{suffix}"
    return f"{value:.0f}"
