"""Evaluate one subnet on a fixed split: route once, fold the experts once, then plain forward passes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from taslora_core.mole import MoLEModel
from taslora_core.subnet import Subnet
from taslora_core.supernet import Supernet

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
"""(images, labels) batches of one split."""
Device = str | torch.device | None
"""Where to run (None: the supernet's device)."""


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy (no smoothing), top-1 accuracy and the number of images."""

    loss: float
    top1: float
    count: int

    def to_dict(self) -> dict[str, float]:
        """JSON form."""
        return {"loss": self.loss, "top1": self.top1, "count": self.count}


@torch.no_grad()
def folded_tensors(
    supernet: Supernet, subnet: Subnet, mole: MoLEModel | None = None, use_experts: bool = True
) -> dict[str, torch.Tensor]:
    """The subnet's sliced tensors with its routed experts folded in (router run once, no per-batch routing)."""
    deltas = mole.deltas(subnet) if (mole is not None and use_experts) else None
    return {k: v.detach() for k, v in supernet.subnet_tensors(subnet, deltas).items()}


def _logits(supernet: Supernet, subnet: Subnet, batches: Batches, mole: MoLEModel | None, use_experts: bool,
            device: Device):
    """(logits float32, labels) per batch, the experts folded once; the supernet in eval mode meanwhile."""
    was_training = supernet.training
    supernet.eval()
    device = device or next(supernet.parameters()).device
    tensors = folded_tensors(supernet, subnet, mole, use_experts)
    try:
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            yield supernet.forward_tensors(images, subnet, tensors).float(), labels
    finally:
        supernet.train(was_training)


@torch.no_grad()
def per_image(supernet: Supernet, subnet: Subnet, batches: Batches, mole: MoLEModel | None = None,
              use_experts: bool = True, device: Device = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (correct: bool, cross-entropy: float32) on the CPU, in batch order: the raw material of
    paired comparisons (the same images with and without experts, or of two methods)."""
    correct, losses = [], []
    for logits, labels in _logits(supernet, subnet, batches, mole, use_experts, device):
        correct.append((logits.argmax(dim=1) == labels).cpu())
        losses.append(F.cross_entropy(logits, labels, reduction="none").cpu())
    return torch.cat(correct), torch.cat(losses)


@torch.no_grad()
def evaluate(supernet: Supernet, subnet: Subnet, batches: Batches, mole: MoLEModel | None = None,
             use_experts: bool = True, device: Device = None) -> EvalResult:
    """Loss/top-1 of `subnet` over `batches`. Under torch.distributed the sums are all-reduced across ranks."""
    device = device or next(supernet.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for logits, labels in _logits(supernet, subnet, batches, mole, use_experts, device):
        totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        totals[1] += (logits.argmax(dim=1) == labels).sum()
        totals[2] += labels.numel()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    count = int(totals[2].item())
    if count == 0:
        raise ValueError("evaluation saw no images; check --val-subset and the split")
    return EvalResult(loss=float(totals[0] / count), top1=float(totals[1] / count), count=count)
