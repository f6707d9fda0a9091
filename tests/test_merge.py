"""The batched merge of routed LoRA experts equals the per-layer merge it replaced, value for value.

The reference below is the merge as it was written before batching (one matmul per block and layer, the
slicing rule applied to U and D); `LoRAExperts.deltas` groups blocks of equal sliced shape into one bmm.
"""

from __future__ import annotations

import random

import pytest
import torch

from taslora_core import slicing
from taslora_core.mole import LoRAExperts, MoLEConfig, MoLEModel
from taslora_core.slicing import LINEAR_LAYERS, block_dims
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, sample_subnet, smallest_subnet
from taslora_core.supernet import Supernet

# fp32 matmuls of the same products may sum in a different order inside a batched kernel: allow a few ulps.
TIGHT = {"rtol": 1e-6, "atol": 1e-6}


def reference_deltas(experts: LoRAExperts, subnet: Subnet, probs: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
    """The per-layer merge loop as it was before batching."""
    out: dict[tuple[int, str], torch.Tensor] = {}
    for b in range(subnet.depth):
        d = block_dims(experts.space, subnet, b)
        params = experts.blocks[b]
        for i, layer in enumerate(LINEAR_LAYERS):
            scale = (probs[b, i] * experts.scale).repeat_interleave(experts.rank)
            u = slicing.rows(layer, params[f"{layer}_U"], d)
            dn = slicing.cols(layer, params[f"{layer}_D"], d)
            out[(b, layer)] = (u * scale) @ dn
    return out


def _experts(space: SearchSpace, k: int, alpha: float, seed: int) -> LoRAExperts:
    torch.manual_seed(seed)
    experts = LoRAExperts(space, k, rank=8, alpha=alpha)
    with torch.no_grad():
        for block in experts.blocks:
            for layer in LINEAR_LAYERS:
                block[f"{layer}_U"].normal_()  # U starts at zero; a trained U is not
    return experts


def _subnets(space: SearchSpace, n: int, seed: int) -> list[Subnet]:
    rng = random.Random(seed)
    return [largest_subnet(space), smallest_subnet(space)] + [sample_subnet(space, rng) for _ in range(n)]


def _probs(space: SearchSpace, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(space.super_depth, len(LINEAR_LAYERS), k, generator=gen).mul(3).softmax(-1)


@pytest.mark.parametrize("space_name,n_random", [("fmnist", 4), ("autoformer-t", 1)])
@pytest.mark.parametrize("k", [1, 12])
@pytest.mark.parametrize("alpha", [1.0, 16.0])
def test_batched_merge_equals_per_layer_merge(space_name: str, n_random: int, k: int, alpha: float) -> None:
    space = SearchSpace.preset(space_name)
    experts = _experts(space, k, alpha, seed=k)
    for i, sub in enumerate(_subnets(space, n_random, seed=k)):
        probs = _probs(space, k, seed=i)[: sub.depth]
        with torch.no_grad():
            got, want = experts.deltas(sub, probs), reference_deltas(experts, sub, probs)
        assert list(got) == list(want)  # same keys, same order
        for key in want:
            assert got[key].dtype == want[key].dtype
            torch.testing.assert_close(got[key], want[key], **TIGHT, msg=lambda m, key=key: f"{space_name} {key}: {m}")


@pytest.mark.parametrize("space_name", ["fmnist", "autoformer-t"])
def test_batched_merge_gradients_equal_per_layer_merge(space_name: str) -> None:
    space = SearchSpace.preset(space_name)
    # float64: the gradients sum thousands of products, and in float32 the two merges' different summation
    # orders differ by ~2e-5 relative on some CPUs' kernels (seen on an Intel Xeon), which is not what is tested
    experts = _experts(space, 12, 16.0, seed=0).double()
    sub = sample_subnet(space, random.Random(1))
    grads = []
    for merge in (experts.deltas, lambda s, p: reference_deltas(experts, s, p)):
        experts.zero_grad()
        probs = _probs(space, 12, seed=3)[: sub.depth].double().requires_grad_(True)
        deltas = merge(sub, probs)
        gen = torch.Generator().manual_seed(4)
        sum((d * torch.randn(d.shape, generator=gen, dtype=torch.float64)).sum() for d in deltas.values()).backward()
        # blocks past the subnet's depth get no gradient from either merge
        grads.append([probs.grad] + [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in experts.parameters()])
    for got, want in zip(*grads):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("space_name", ["fmnist", "autoformer-t"])
def test_merge_at_init_is_exactly_zero(space_name: str) -> None:
    space = SearchSpace.preset(space_name)
    torch.manual_seed(0)
    experts = LoRAExperts(space, 12, rank=8, alpha=16.0)  # U = 0 at init
    sub = sample_subnet(space, random.Random(2))
    deltas = experts.deltas(sub, _probs(space, 12, seed=0)[: sub.depth])
    assert len(deltas) == sub.depth * len(LINEAR_LAYERS)
    for (b, layer), delta in deltas.items():
        d = block_dims(space, sub, b)
        assert delta.shape == (slicing.out_features(layer, d), slicing.in_features(layer, d))
        assert torch.count_nonzero(delta) == 0


def test_model_deltas_run_the_router_once_per_subnet() -> None:
    space = SearchSpace.preset("fmnist")
    torch.manual_seed(0)
    model = MoLEModel(Supernet(space), MoLEConfig())
    calls = []
    model.router.register_forward_hook(lambda *_: calls.append(1))
    sub = sample_subnet(space, random.Random(0))
    deltas = model.deltas(sub)
    assert len(calls) == 1
    with torch.no_grad():
        want = reference_deltas(model.experts, sub, model.router(sub))
    for key in want:
        torch.testing.assert_close(deltas[key].detach(), want[key], **TIGHT)
