"""What a specialize run trains: weight updates of ONE subnet's four linear layers per block, starting from its
routed mixture of experts (or from zero without experts).

`SubnetDeltas(supernet, subnet, weights, mole)` holds, per (block, layer) of the subnet, trainable tensors of the
subnet's sliced shape; `deltas()` returns the weight update each layer gets on top of the sliced supernet weight,
which is exactly what `supernet(x, subnet, deltas)` and `taslora_deploy.fold.fold_subnet(..., deltas=...)` add:

- ``lora``: the experts' own factors at the subnet's fixed routing. The router runs once; per layer the sliced
  concatenated factors U (out, K*r) and D (K*r, in) (`LoRAExperts.sliced_factors`) become parameters and the
  routing weights p_k * alpha / r a fixed column scale s (`LoRAExperts.column_scale`): delta = (U * s) D, which
  at step 0 is the routed mixture (`MoLEModel.deltas`, checked). Without experts: one fresh rank-r LoRA
  (U = 0, D at LoRA's init), so delta starts at zero.
- ``single-lora``: the routed mixture M, frozen, plus one fresh rank-r LoRA: delta = M + (alpha / r) U D.
- ``linear``: the full sliced weight W, starting at sliced supernet weight + M: delta = W - sliced supernet weight.

The frozen supernet is sliced once (`base`); each step adds the deltas to the four linear weights of that slice.
`SubnetDeltas` also serves as the delta source of `taslora_core.evaluate` (its `deltas(subnet)`), so validation
and test numbers come from THE evaluation code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from taslora_core.mole import MoLEModel
from taslora_core.slicing import LINEAR_LAYERS, LINEAR_PATHS, Deltas, block_dims, in_features, out_features
from taslora_core.subnet import Subnet
from taslora_core.supernet import Supernet

__all__ = ["MIXTURE_TOLERANCE", "FixedDeltas", "SubnetDeltas", "delta_name", "weight_name"]

MIXTURE_TOLERANCE = 1e-5
"""Max |experts' factors at step 0 - MoLEModel.deltas| (relative to the mixture's largest entry) for `lora`."""


def weight_name(block: int, layer: str) -> str:
    """The sliced tensor name of a linear layer's weight (`slicing.sliced_state`'s / the standalone ViT's)."""
    return f"blocks.{block}.{LINEAR_PATHS[layer]}.weight"


def delta_name(block: int, layer: str) -> str:
    """The key of a (block, layer) delta in specialized.safetensors, e.g. 'blocks.0.qkv'."""
    return f"blocks.{block}.{layer}"


class SubnetDeltas(nn.Module):
    """Trainable weight updates of one subnet (see the module docstring for the three `weights` modes)."""

    def __init__(self, supernet: Supernet, subnet: Subnet, weights: str, mole: MoLEModel | None = None,
                 rank: int = 8, alpha: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        self.subnet, self.weights = subnet, weights
        self.keys = [(b, layer) for b in range(subnet.depth) for layer in LINEAR_LAYERS]
        with torch.no_grad():
            # the frozen slice, computed once; a plain dict so that it is neither trained nor checkpointed
            self.base = {k: v.detach().clone() for k, v in supernet.subnet_tensors(subnet).items()}
            self.routing = mole.routing(subnet).detach().clone() if mole is not None else None
            mixture = dict(mole.experts.deltas(subnet, self.routing)) if mole is not None else {}
        gen = torch.Generator().manual_seed(int(seed))
        self.blocks = nn.ModuleList(nn.ParameterDict() for _ in range(subnet.depth))
        for b, layer in self.keys:
            d = block_dims(supernet.space, subnet, b)
            out_f, in_f = out_features(layer, d), in_features(layer, d)
            params = self.blocks[b]
            base_w = self.base[weight_name(b, layer)]
            if weights == "linear":
                params[f"{layer}_W"] = nn.Parameter(base_w + mixture[(b, layer)] if mixture else base_w.clone())
                continue
            if weights == "lora" and mole is not None:
                i = LINEAR_LAYERS.index(layer)
                u, dn = mole.experts.sliced_factors(layer, [b], d)
                params[f"{layer}_U"] = nn.Parameter(u[0].detach().clone())
                params[f"{layer}_D"] = nn.Parameter(dn[0].detach().clone())
                self.register_buffer(f"scale_{b}_{layer}", mole.experts.column_scale(self.routing[b, i]).detach().clone())
                continue
            # a fresh LoRA (single-lora, or lora without experts): U = 0, D at LoRA's init, scale alpha / r
            params[f"{layer}_U"] = nn.Parameter(torch.zeros(out_f, rank))
            down = torch.empty(rank, in_f)
            nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=gen)
            params[f"{layer}_D"] = nn.Parameter(down)
            self.register_buffer(f"scale_{b}_{layer}", torch.full((rank,), alpha / rank))
            if weights == "single-lora":
                self.register_buffer(f"mixture_{b}_{layer}",
                                     mixture[(b, layer)].detach().clone() if mixture else torch.zeros(out_f, in_f))
        if weights == "lora" and mole is not None:
            self._check_mixture(mixture)

    def _check_mixture(self, mixture: Deltas) -> None:
        """The experts' factors at step 0 must reproduce the routed mixture: a MoLE recipe whose deltas are not
        routed LoRA factors cannot be specialised through them."""
        start = self.deltas()
        for key in self.keys:
            ref = mixture[key]
            diff = (start[key] - ref).abs().max().item()
            if diff > MIXTURE_TOLERANCE * max(ref.abs().max().item(), 1.0):
                raise ValueError(
                    f"the experts' factors of block {key[0]} {key[1]} do not reproduce the routed mixture (max |diff| "
                    f"{diff:.3g}); this MoLE recipe cannot be specialised through its factors: use --weights linear "
                    "or --weights single-lora")

    def deltas(self, subnet: Subnet | None = None) -> dict[tuple[int, str], torch.Tensor]:
        """{(block, layer): weight update of the subnet's sliced shape}. `subnet` (optional) must be this one: the
        signature of a MoLE model's `deltas`, so `taslora_core.evaluate` takes this module as its delta source."""
        if subnet is not None and subnet != self.subnet:
            raise ValueError("these deltas belong to another subnet")
        out: dict[tuple[int, str], torch.Tensor] = {}
        for b, layer in self.keys:
            params = self.blocks[b]
            if self.weights == "linear":
                out[(b, layer)] = params[f"{layer}_W"] - self.base[weight_name(b, layer)]
                continue
            scale = getattr(self, f"scale_{b}_{layer}")
            delta = (params[f"{layer}_U"] * scale) @ params[f"{layer}_D"]
            if self.weights == "single-lora":
                delta = getattr(self, f"mixture_{b}_{layer}") + delta
            out[(b, layer)] = delta
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """The subnet's sliced tensors with the current deltas on its linear weights (for `forward_tensors`)."""
        tensors = dict(self.base)
        if self.weights == "linear":
            for b, layer in self.keys:
                tensors[weight_name(b, layer)] = self.blocks[b][f"{layer}_W"]
            return tensors
        for (b, layer), delta in self.deltas().items():
            tensors[weight_name(b, layer)] = self.base[weight_name(b, layer)] + delta
        return tensors

    def to_state(self) -> dict[str, torch.Tensor]:
        """The final deltas as specialized.safetensors stores them ({'blocks.<b>.<layer>': tensor}, float32)."""
        with torch.no_grad():
            return {delta_name(b, layer): t.detach().float().cpu().contiguous() for (b, layer), t in self.deltas().items()}


class FixedDeltas:
    """Precomputed deltas of one subnet behind a MoLE model's `deltas(subnet)` signature: the delta source
    `taslora_core.evaluate` takes as `mole` (e.g. a finished specialize run's, to measure it as exported)."""

    def __init__(self, subnet: Subnet, deltas: Deltas) -> None:
        self.subnet, self._deltas = subnet, dict(deltas)

    def deltas(self, subnet: Subnet) -> dict[tuple[int, str], torch.Tensor]:
        """The deltas (`subnet` must be theirs)."""
        if subnet != self.subnet:
            raise ValueError("these deltas belong to another subnet")
        return self._deltas
