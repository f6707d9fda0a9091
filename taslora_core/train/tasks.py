"""What the training loop trains: the whole supernet (supernet training, full fine-tuning) or a MoLE model's
experts and router on its frozen supernet."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from taslora_core.checkpoint import CheckpointError
from taslora_core.distributed import DistContext
from taslora_core.evaluate import EvalResult, evaluate
from taslora_core.mole import MoLEModel
from taslora_core.router import routing_mutual_information
from taslora_core.subnet import Subnet
from taslora_core.supernet import Supernet
from taslora_core.train.loop import TrainTask, autocast
from taslora_core.train.optim import OptimizerSet


class ModelTask(TrainTask):
    """A task on one model with a supernet inside: its optimisers, validation loader and epoch-end subnets.

    Subclasses name the model's supernet and experts (`supernet`, `mole`) and what a checkpoint restores.
    """

    def __init__(self, model: nn.Module, supernet: Supernet, mole: MoLEModel | None, optim: OptimizerSet | None,
                 val_loader: Any, eval_subnets: list[tuple[str, Subnet]], ctx: DistContext, amp: bool) -> None:
        self.module, self.supernet, self.mole = model, supernet, mole
        self.space, self.optim = supernet.space, optim
        self.val_loader, self.eval_subnets, self.ctx, self.amp = val_loader, eval_subnets, ctx, amp

    def forward(self, images: torch.Tensor, subnet: Subnet) -> torch.Tensor:
        """Training logits of `subnet`."""
        return self.module(images, subnet)

    def evaluate(self, subnet: Subnet, use_experts: bool = True) -> EvalResult:
        """Validation loss/top-1 of `subnet` (with the experts, when the model has them and `use_experts`)."""
        with autocast(self.ctx, self.amp):
            return evaluate(self.supernet, subnet, self.val_loader, mole=self.mole, use_experts=use_experts,
                            device=self.ctx.device)

    def epoch_eval(self) -> dict[str, Any]:
        """Validation numbers of the epoch-end subnets."""
        return {name: self.evaluate(sn).to_dict() for name, sn in self.eval_subnets}


class SupernetTask(ModelTask):
    """Train all supernet weights (supernet training, and the full fine-tuning baseline)."""

    kind = "supernet"

    def __init__(self, supernet: Supernet, optim: OptimizerSet | None, val_loader: Any,
                 eval_subnets: list[tuple[str, Subnet]], ctx: DistContext, amp: bool) -> None:
        super().__init__(supernet, supernet, None, optim, val_loader, eval_subnets, ctx, amp)

    def model_state(self) -> dict[str, torch.Tensor]:
        """Every supernet tensor."""
        return self.supernet.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore every supernet tensor (keys and shapes checked)."""
        self.supernet.load_state_dict_strict(state, source="training state")


class FinetuneTask(SupernetTask):
    """The full fine-tuning baseline."""

    kind = "finetune"


class MoLETask(ModelTask):
    """Train experts + router of a MoLE model on its frozen supernet; with `mi_weight` > 0 the loss also gets
    -mi_weight * I(expert; group) of the step's routing (`router.routing_mutual_information`)."""

    kind = "mole"

    def __init__(self, model: MoLEModel, optim: OptimizerSet | None, val_loader: Any,
                 eval_subnets: list[tuple[str, Subnet]], ctx: DistContext, amp: bool, mi_weight: float = 0.0) -> None:
        super().__init__(model, model.supernet, model, optim, val_loader, eval_subnets, ctx, amp)
        self.model = model
        self.mi_weight = mi_weight

    def routing_mi(self, subnets: list[Subnet]) -> torch.Tensor:
        """I(expert; group) in nats over the blocks of `subnets` (the router run once per subnet)."""
        probs = torch.cat([self.model.routing(sn) for sn in subnets])
        groups = torch.tensor([g for sn in subnets for g in self.model.router.block_groups(sn)])
        return routing_mutual_information(probs.float(), groups, len(self.model.router.groups))

    def auxiliary_loss(self, subnets: list[Subnet]) -> tuple[torch.Tensor, dict[str, float]] | None:
        """-mi_weight * the routing MI of the step's subnets (None when the weight is 0)."""
        if self.mi_weight <= 0:
            return None
        mi = self.routing_mi(subnets)
        return -self.mi_weight * mi, {"routing_mi": float(mi.detach())}

    def model_state(self) -> dict[str, torch.Tensor]:
        """The experts' and the router's tensors."""
        return self.model.trainable_state()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the experts and the router (the same keys required)."""
        want = self.model.trainable_state()
        if sorted(want) != sorted(state):
            raise CheckpointError("training state does not match this MoLE model (experts/router keys differ)")
        with torch.no_grad():
            for k, v in want.items():
                v.copy_(state[k])
