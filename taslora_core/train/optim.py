"""Optimisers and learning-rate schedules of supernet training, MoLE training and full fine-tuning.

Every schedule is a `timm.scheduler.CosineLRScheduler` stepped **per iteration** (`step_update(t)` with the global
step `t`, `t_in_epochs=False`), so warm-up and cosine are smooth even for runs of one or two epochs; the
step count of an epoch is `len(train_loader)`. AutoFormer steps per epoch; per iteration gives the same curve
sampled more finely.

- Supernet (AutoFormer, `autoformer.md` s6): AdamW (eps 1e-8, weight decay 0.05) with AutoFormer's no-decay group
  (`pos_embed`, `cls_token`, every 1-D parameter and every `.bias`; the 2-D relative-position tables DO get
  decay), base LR 5e-4 scaled by total batch / 512, warm-up from `warmup_lr` then cosine to `min_lr`
  (timm's `warmup_prefix=False`, as AutoFormer's `create_scheduler`).
- MoLE (`tas-lora-method.md` s4): experts AdamW, LR rising linearly from `warmup_start_lr` to `expert_lr` during
  the warm-up epochs, then cosine to `min_lr`; router SGD (momentum 0.9), frozen during warm-up
  (`requires_grad=False`, never stepped), then cosine from `router_lr` to 0 over the remaining steps. LoRA+ (a
  recipe setting) gives the up-projections their own AdamW group at a multiple of the experts' LR.
- Full fine-tuning baseline: the supernet's parameters with the supernet's AdamW groups and the experts' schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token")
"""Parameters AutoFormer's `no_weight_decay()` names and timm 0.3's `add_weight_decay` matches exactly."""


def autoformer_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as timm's `add_weight_decay`: no decay for pos/cls, 1-D params and biases; decay for the rest."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def scaled_lr(base_lr: float, total_batch: int) -> float:
    """AutoFormer's linear scaling: base LR per 512 images times the total batch (all ranks)."""
    return base_lr * total_batch / 512.0


@dataclass
class ScheduledOptimizer:
    """One optimiser, its per-iteration schedule, and the global step from which it trains."""

    name: str
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    params: list[nn.Parameter]
    start_step: int = 0

    def active(self, step: int) -> bool:
        """True once `step` has reached `start_step`."""
        return step >= self.start_step


class OptimizerSet:
    """The optimisers of one training run, driven by the global step.

    `prepare(step)` sets the learning rates of `step` and switches `requires_grad` on the parameters of the
    optimisers that are active (off for the others, e.g. the router during warm-up); `step()` steps the active
    ones.
    """

    def __init__(self, items: Iterable[ScheduledOptimizer]) -> None:
        self.items = list(items)
        self._step = 0
        seen: set[int] = set()
        self._params: list[nn.Parameter] = []
        for item in self.items:
            for p in item.params:
                if id(p) not in seen:
                    seen.add(id(p))
                    self._params.append(p)

    def trainable_params(self) -> list[nn.Parameter]:
        """Every parameter any optimiser owns, in a fixed order (the order of the gradient all-reduce)."""
        return self._params

    def prepare(self, step: int) -> None:
        """Set learning rates and `requires_grad` for global step `step`."""
        self._step = step
        for item in self.items:
            on = item.active(step)
            for p in item.params:
                if p.requires_grad != on:
                    p.requires_grad_(on)
            if on:
                item.scheduler.step_update(step - item.start_step)

    def zero_grad(self) -> None:
        """Drop every gradient (set to None)."""
        for p in self._params:
            p.grad = None

    def step(self) -> None:
        """Step the optimisers active at the step given to `prepare`."""
        for item in self.items:
            if item.active(self._step):
                item.optimizer.step()

    def lrs(self) -> dict[str, float]:
        """Current learning rate of each optimiser's first group (0 while it is frozen)."""
        return {
            item.name: (float(item.optimizer.param_groups[0]["lr"]) if item.active(self._step) else 0.0)
            for item in self.items
        }

    def state_dict(self) -> dict[str, Any]:
        """Optimiser and scheduler states (tensors, numbers, strings, lists and dicts only)."""
        return {
            item.name: {"optimizer": item.optimizer.state_dict(), "scheduler": item.scheduler.state_dict()}
            for item in self.items
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`; the optimiser names must match."""
        names = [item.name for item in self.items]
        if sorted(state) != sorted(names):
            raise ValueError(f"cannot resume: checkpoint has optimisers {sorted(state)} but this run uses {sorted(names)}")
        for item in self.items:
            item.optimizer.load_state_dict(state[item.name]["optimizer"])
            item.scheduler.load_state_dict(state[item.name]["scheduler"])


def _cosine(
    optimizer: torch.optim.Optimizer, total: int, warmup: int, warmup_lr: float, min_lr: float, prefix: bool
) -> CosineLRScheduler:
    # timm warns when a schedule has a single step (e.g. the router when warm-up fills the run); that is intended.
    logging.getLogger(CosineLRScheduler.__module__).setLevel(logging.ERROR)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total - (warmup if prefix else 0), 1),
        lr_min=min_lr,
        warmup_t=warmup,
        warmup_lr_init=warmup_lr,
        warmup_prefix=prefix,
        t_in_epochs=False,
    )


def supernet_optimizers(
    supernet: nn.Module,
    lr: float,
    total_steps: int,
    warmup_steps: int,
    weight_decay: float = 0.05,
    warmup_lr: float = 1e-6,
    min_lr: float = 1e-5,
) -> OptimizerSet:
    """AutoFormer's supernet recipe; `lr` is the already scaled learning rate."""
    return _whole_supernet(supernet, lr, total_steps, warmup_steps, warmup_lr, min_lr, weight_decay, prefix=False)


def mole_optimizers(
    experts: nn.Module,
    router: nn.Module | None,
    total_steps: int,
    warmup_steps: int,
    expert_lr: float = 5e-4,
    router_lr: float = 0.1,
    warmup_start_lr: float = 1e-5,
    min_lr: float = 1e-6,
    weight_decay: float = 0.05,
    momentum: float = 0.9,
    lora_plus: float = 1.0,
) -> OptimizerSet:
    """The paper's two optimisers: experts AdamW with linear warm-up then cosine; router SGD, frozen in warm-up.

    `router=None` trains no router (a frozen, hard or factor routing). `lora_plus` != 1 (LoRA+) puts the experts'
    up-projections U (`experts.up_params()`) in a second AdamW group whose learning rate is `lora_plus` times the
    experts' at every step of the warm-up and cosine.
    """
    if lora_plus == 1.0:
        e_params = list(experts.parameters())
        e_opt = torch.optim.AdamW(e_params, lr=expert_lr, eps=1e-8, weight_decay=weight_decay)
    else:
        down, up = list(experts.down_params()), list(experts.up_params())  # type: ignore[operator]
        e_params = down + up
        # timm's schedulers multiply a group's scheduled LR by its `lr_scale`: the ratio holds at every step
        e_opt = torch.optim.AdamW([{"params": down}, {"params": up, "lr_scale": lora_plus}], lr=expert_lr,
                                  eps=1e-8, weight_decay=weight_decay)
    e_sched = _cosine(e_opt, total_steps, warmup_steps, warmup_start_lr, min_lr, prefix=True)
    items = [ScheduledOptimizer("experts", e_opt, e_sched, e_params, start_step=0)]
    if router is not None:
        r_params = list(router.parameters())
        r_opt = torch.optim.SGD(r_params, lr=router_lr, momentum=momentum)
        r_sched = _cosine(r_opt, total_steps - warmup_steps, 0, 0.0, 0.0, prefix=False)
        items.append(ScheduledOptimizer("router", r_opt, r_sched, r_params, start_step=warmup_steps))
    return OptimizerSet(items)


def finetune_optimizers(
    supernet: nn.Module,
    total_steps: int,
    warmup_steps: int,
    lr: float = 5e-4,
    warmup_start_lr: float = 1e-5,
    min_lr: float = 1e-6,
    weight_decay: float = 0.05,
) -> OptimizerSet:
    """Full fine-tuning of the supernet: AutoFormer's AdamW groups with the experts' warm-up + cosine schedule."""
    return _whole_supernet(supernet, lr, total_steps, warmup_steps, warmup_start_lr, min_lr, weight_decay, prefix=True)


def _whole_supernet(supernet: nn.Module, lr: float, total_steps: int, warmup_steps: int, warmup_lr: float,
                    min_lr: float, weight_decay: float, prefix: bool) -> OptimizerSet:
    """Every supernet parameter trained by AdamW with AutoFormer's groups, on one warm-up + cosine schedule."""
    for p in supernet.parameters():
        p.requires_grad_(True)
    params = [p for p in supernet.parameters()]
    opt = torch.optim.AdamW(autoformer_param_groups(supernet, weight_decay), lr=lr, eps=1e-8)
    sched = _cosine(opt, total_steps, warmup_steps, warmup_lr, min_lr, prefix=prefix)
    return OptimizerSet([ScheduledOptimizer("supernet", opt, sched, params)])
