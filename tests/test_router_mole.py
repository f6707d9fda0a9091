"""Router and MoLE model: group-wise init, exact start at the frozen supernet, the merge, gradient flow."""

from __future__ import annotations

import math
import random

import pytest
import torch

from taslora_core import slicing
from taslora_core.mole import MoLEConfig, MoLEModel
from taslora_core.router import Router, RouterConfig
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, sample_subnet, smallest_subnet
from taslora_core.supernet import Supernet


def _subnets(space: SearchSpace, n: int, seed: int = 0):
    rng = random.Random(seed)
    return [largest_subnet(space), smallest_subnet(space)] + [sample_subnet(space, rng) for _ in range(n)]


@pytest.mark.parametrize("space_name", ["fmnist", "autoformer-t", "autoformer-s"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "mlp"])
def test_group_wise_init_routes_each_block_to_its_groups_expert(space_name: str, kind: str) -> None:
    torch.manual_seed(0)
    space = SearchSpace.preset(space_name)
    k = len(space.groups())
    beta = 3.0
    router = Router(space, k, RouterConfig(kind=kind, init="group", beta=beta))
    p_own = math.exp(beta) / (math.exp(beta) + k - 1)
    p_other = 1.0 / (math.exp(beta) + k - 1)
    seen_groups = set()
    with torch.no_grad():
        for sn in _subnets(space, 6):
            probs = router(sn)
            assert probs.shape == (sn.depth, 4, k)
            torch.testing.assert_close(probs.sum(-1), torch.ones(sn.depth, 4))
            for b, g in enumerate(router.block_groups(sn)):
                seen_groups.add(g)
                assert g == space.group_index(sn.num_heads[b], sn.mlp_ratios[b], sn.embed_dim)
                own = probs[b, :, g]
                assert torch.all((own - p_own).abs() < 2e-3), (b, g, own, p_own)
                others = torch.cat([probs[b, :, :g], probs[b, :, g + 1 :]], dim=1)
                assert torch.all((others - p_other).abs() < 2e-3)
    assert len(seen_groups) > 2  # several different groups were checked


def test_random_init_is_not_group_wise() -> None:
    torch.manual_seed(0)
    space = SearchSpace.preset("fmnist")
    k = len(space.groups())
    router = Router(space, k, RouterConfig(init="random"))
    assert torch.count_nonzero(router.head_bias) == 0
    with torch.no_grad():
        for sn in _subnets(space, 3):
            probs = router(sn)
            groups = router.block_groups(sn)
            own = probs[torch.arange(sn.depth), :, torch.tensor(groups)]
            assert own.max() < 0.3  # near uniform (1/12), far from e^3/(e^3+11) = 0.65


def test_single_expert_always_weight_one() -> None:
    space = SearchSpace.preset("fmnist")
    router = Router(space, 1, RouterConfig(init="group"))
    for sn in _subnets(space, 2):
        assert torch.equal(router(sn), torch.ones(sn.depth, 4, 1))


def test_group_init_needs_k_equal_groups() -> None:
    with pytest.raises(ValueError, match="group-wise init"):
        Router(SearchSpace.preset("fmnist"), 5, RouterConfig(init="group"))


def test_depth_attribute_multiplies_groups() -> None:
    space = SearchSpace.preset("fmnist")
    cfg = MoLEConfig(router=RouterConfig(include_depth=True))
    assert cfg.resolved_experts(space) == len(space.groups()) * len(space.depths)
    torch.manual_seed(0)
    router = Router(space, cfg.resolved_experts(space), cfg.router)
    sn = largest_subnet(space)
    g = router.block_groups(sn)[0]
    assert router(sn)[0, 0].argmax().item() == g


def test_position_heads_separate_positions_of_one_group() -> None:
    """Per-position heads start group-wise like shared heads, but a change to one position's head moves only that
    position's routing; with shared heads the same change moves every block of the group."""
    torch.manual_seed(0)
    space = SearchSpace.preset("fmnist")
    k = len(space.groups())
    sn = Subnet(embed_dim=96, depth=6, num_heads=(3,) * 6, mlp_ratios=(3.0,) * 6)  # 6 blocks, one group
    g = space.group_index(3, 3.0, 96)
    shared = Router(space, k, RouterConfig(init="group"))
    per_pos = Router(space, k, RouterConfig(init="group", position_heads=True))
    assert per_pos.head_bias.shape[0] == k * space.super_depth and shared.head_bias.shape[0] == k
    with torch.no_grad():
        torch.testing.assert_close(per_pos(sn)[:, :, g], shared(sn)[:, :, g], atol=2e-3, rtol=0)
        before = per_pos(sn).clone()
        other = [layer * k + (g + 1) % k for layer in range(4)]  # raise another expert (softmax ignores a shift)
        per_pos.head_bias[g * space.super_depth + 2, other] += 5.0  # group g at position 2 only
        moved = (per_pos(sn) - before).abs().amax(dim=(1, 2))
        assert moved[2] > 0.1 and torch.all(moved[[0, 1, 3, 4, 5]] < 1e-6)
        before = shared(sn).clone()
        shared.head_bias[g, other] += 5.0
        assert torch.all((shared(sn) - before).abs().amax(dim=(1, 2)) > 0.1)


def test_position_heads_round_trip_in_mole_config() -> None:
    cfg = MoLEConfig(router=RouterConfig(position_heads=True))
    assert MoLEConfig.from_dict(cfg.to_dict()).router.position_heads is True
    assert MoLEConfig.from_dict({"router": {}}).router.position_heads is False  # older checkpoints


@pytest.fixture(scope="module")
def tiny() -> tuple[Supernet, MoLEModel]:
    torch.manual_seed(0)
    supernet = Supernet(SearchSpace.preset("fmnist")).eval()
    model = MoLEModel(supernet, MoLEConfig()).eval()
    return supernet, model


def test_fresh_mole_output_equals_frozen_supernet_exactly(tiny) -> None:
    supernet, model = tiny
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for sn in _subnets(supernet.space, 4):
            deltas = model.deltas(sn)
            assert len(deltas) == 4 * sn.depth
            assert all(torch.count_nonzero(d) == 0 for d in deltas.values())
            assert torch.equal(model(x, sn), supernet(x, sn))


@pytest.mark.parametrize("alpha", [1.0, 16.0])
def test_merge_equals_explicit_sum_over_experts(tiny, alpha: float) -> None:
    """delta = slice(sum_k p_k (alpha/r) U_k D_k) with the supernet's own slicing (interleaved qkv rows)."""
    supernet, _ = tiny
    torch.manual_seed(3)
    model = MoLEModel(supernet, MoLEConfig(alpha=alpha))
    with torch.no_grad():
        for p in model.experts.parameters():
            p.normal_()
    k, r = model.num_experts, model.experts.rank
    sn = sample_subnet(supernet.space, random.Random(5))
    with torch.no_grad():
        probs = model.routing(sn)
        deltas = model.deltas(sn)
        for b in range(sn.depth):
            dims = slicing.block_dims(supernet.space, sn, b)
            for i, layer in enumerate(slicing.LINEAR_LAYERS):
                u, d = model.experts.blocks[b][f"{layer}_U"], model.experts.blocks[b][f"{layer}_D"]
                full = sum(probs[b, i, e] * u[:, e * r : (e + 1) * r] @ d[e * r : (e + 1) * r] * alpha / r for e in range(k))
                want = slicing.weight(layer, full, dims)
                torch.testing.assert_close(deltas[(b, layer)], want, rtol=1e-4, atol=1e-4)


def test_gradients_reach_only_experts_and_router(tiny) -> None:
    supernet, _ = tiny
    torch.manual_seed(4)
    model = MoLEModel(supernet, MoLEConfig()).train()
    sn = smallest_subnet(supernet.space)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x, sn), y).backward()
    assert all(p.grad is None and not p.requires_grad for p in supernet.parameters())
    # At init U = 0: only U receives a gradient; D and the router get exactly zero.
    for b in range(sn.depth):
        dims = slicing.block_dims(supernet.space, sn, b)
        for layer in slicing.LINEAR_LAYERS:
            gu = model.experts.blocks[b][f"{layer}_U"].grad
            gd = model.experts.blocks[b][f"{layer}_D"].grad
            assert torch.count_nonzero(gd) == 0
            assert torch.count_nonzero(slicing.rows(layer, gu, dims)) > 0
            assert torch.count_nonzero(gu) == torch.count_nonzero(slicing.rows(layer, gu, dims))  # none outside the slice
    for b in range(sn.depth, supernet.space.super_depth):  # blocks past the depth are unused
        assert all(p.grad is None for p in model.experts.blocks[b].values())
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.router.parameters())
