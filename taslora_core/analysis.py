"""Feature collapse and expert usage of a trained MoLE checkpoint.

Feature collapse (the TAS-LoRA paper's motivation): penultimate features (after the final norm and the
pooling, before the head) of different subnets of a weight-entangled supernet are nearly parallel. For two
subnets with embed dims E_i, E_j we compare, per image, the first min(E_i, E_j) channels — weight
entanglement makes channel c the same channel in both — by cosine similarity, and average over images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from taslora_core.evaluate import folded_tensors
from taslora_core.mole import MoLEModel
from taslora_core.slicing import LINEAR_LAYERS
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, sample_distinct as draw_distinct
from taslora_core.supernet import Supernet


def sample_distinct(space: SearchSpace, n: int, seed: int) -> list[Subnet]:
    """n distinct uniformly sampled subnets (fewer if the space is smaller)."""
    return draw_distinct(space, n, seed)


@torch.no_grad()
def penultimate_features(
    supernet: Supernet,
    subnet: Subnet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    mole: MoLEModel | None = None,
    use_experts: bool = True,
) -> torch.Tensor:
    """(N, E) pooled features of `subnet` over all batches, experts folded once."""
    supernet.eval()
    tensors = folded_tensors(supernet, subnet, mole, use_experts)
    feats = [supernet._features(x, subnet, tensors) for x, _ in batches]
    return torch.cat(feats).float()


def cosine_matrix(features: list[torch.Tensor]) -> torch.Tensor:
    """(S, S) mean per-image cosine similarity between subnets' features on their common channels."""
    n = len(features)
    out = torch.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            m = min(features[i].shape[1], features[j].shape[1])
            cos = F.cosine_similarity(features[i][:, :m], features[j][:, :m], dim=1).mean()
            out[i, j] = out[j, i] = cos
    return out


def mean_off_diagonal(matrix: torch.Tensor) -> float:
    """Mean of the off-diagonal entries."""
    n = matrix.shape[0]
    if n < 2:
        return float("nan")
    return float((matrix.sum() - matrix.diagonal().sum()) / (n * n - n))


@dataclass
class CollapseResult:
    """Cosine matrices with and without experts, and their mean off-diagonal similarity."""

    subnets: list[Subnet]
    without_experts: torch.Tensor
    with_experts: torch.Tensor | None

    def summary(self) -> dict[str, float | None]:
        """Mean off-diagonal cosine similarity with and without experts."""
        return {
            "mean_cos_supernet": mean_off_diagonal(self.without_experts),
            "mean_cos_mole": mean_off_diagonal(self.with_experts) if self.with_experts is not None else None,
        }


def feature_collapse(
    supernet: Supernet,
    subnets: list[Subnet],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    mole: MoLEModel | None = None,
) -> CollapseResult:
    """Cosine similarity between the penultimate features of `subnets`, without and (if `mole`) with experts."""
    plain = [penultimate_features(supernet, s, batches) for s in subnets]
    routed = [penultimate_features(supernet, s, batches, mole) for s in subnets] if mole is not None else None
    return CollapseResult(subnets, cosine_matrix(plain), cosine_matrix(routed) if routed else None)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the distributions in the last dim, with 0 log 0 = 0 (no clamp needed)."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def routing_entropy(probs: torch.Tensor) -> float:
    """Mean entropy (nats, in float64) of routing distributions (..., K) over blocks and layers; max is log K."""
    return float(entropy(probs.detach().double()).mean())


@dataclass
class RoutingStats:
    """Mean routing distribution per (group, layer) over the blocks of sampled subnets."""

    mean_probs: torch.Tensor  # (G, 4, K)
    counts: torch.Tensor  # (G,) blocks seen per group

    def entropy(self) -> torch.Tensor:
        """(G, 4) entropy (nats) of the mean distributions."""
        return entropy(self.mean_probs)

    def top_share(self) -> torch.Tensor:
        """(G, 4) probability mass of the most used expert."""
        return self.mean_probs.max(-1).values

    def own_expert_share(self) -> torch.Tensor:
        """(G, 4) mass on expert g for group g (the group-wise init's expert); NaN when K != G."""
        g, _, k = self.mean_probs.shape
        if g != k:
            return torch.full((g, len(LINEAR_LAYERS)), math.nan)
        return self.mean_probs[torch.arange(g), :, torch.arange(g)]


@torch.no_grad()
def routing_stats(mole: MoLEModel, n_subnets: int = 200, seed: int = 0) -> RoutingStats:
    """Average the router's output per architecture group over the blocks of `n_subnets` sampled subnets."""
    router = mole.router
    groups = len(router.groups)
    total = torch.zeros(groups, len(LINEAR_LAYERS), mole.num_experts)
    counts = torch.zeros(groups)
    for sub in sample_distinct(mole.space, n_subnets, seed):
        probs = router(sub).cpu()
        for b, g in enumerate(router.block_groups(sub)):
            total[g] += probs[b]
            counts[g] += 1
    mean = total / counts.clamp_min(1)[:, None, None]
    return RoutingStats(mean, counts)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of a per-image paired difference (B - A on the same images) and its bootstrap 95% interval."""

    mean: float
    low: float
    high: float
    count: int

    def to_dict(self) -> dict[str, float]:
        """JSON form."""
        return {"mean": self.mean, "ci95": [self.low, self.high], "count": self.count}

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0."""
        return self.low > 0 or self.high < 0


def paired_bootstrap(diff: torch.Tensor, resamples: int = 2000, seed: int = 0) -> PairedDifference:
    """Percentile bootstrap over images of the mean of `diff` (one value per image, e.g. correct_B - correct_A).

    Pairing matters: two models scored on the same 10,000 test images differ far less from image to image
    than two independent samples would, so a paired interval is much tighter than comparing two top-1 errors.
    """
    values = torch.as_tensor(diff, dtype=torch.float64).flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one paired value")
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(resamples, dtype=torch.float64)
    for start in range(0, resamples, 100):  # 100 resamples at a time keeps memory at 100 x n
        stop = min(start + 100, resamples)
        idx = torch.randint(0, n, (stop - start, n), generator=gen)
        means[start:stop] = values[idx].mean(dim=1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return PairedDifference(float(values.mean()), float(low), float(high), n)
