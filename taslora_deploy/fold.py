"""Fold a subnet's routed experts into its weights and check the folded model against run-time MoLE.

`fold_subnet` runs the router once for the subnet, merges sum_k p_k E_k into every sliced MoLE weight and
materialises a standalone ViT. `UnmergedMoLEViT` is the same subnet with the experts kept as per-token LoRA
branches and the router evaluated on every forward: the reference for parity and for "what folding saves".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from taslora_core.analysis import routing_entropy
from taslora_core.mole import MoLEModel, column_scale
from taslora_core.slicing import LINEAR_LAYERS, LINEAR_PATHS, Deltas, block_dims
from taslora_core.subnet import Subnet
from taslora_core.supernet import Supernet
from taslora_deploy.errors import ParityError
from taslora_deploy.standalone.model import StandaloneViT, materialize

__all__ = ["FoldResult", "ParityError", "UnmergedMoLEViT", "check_parity", "fold_subnet"]


@dataclass
class FoldResult:
    """A folded standalone model and the routing that produced it."""

    model: StandaloneViT
    routing: torch.Tensor | None  # (depth, 4, K) or None without experts

    def routing_entropy(self) -> float | None:
        """Mean entropy (nats) of the routing distributions."""
        return None if self.routing is None else routing_entropy(self.routing)


@torch.no_grad()
def fold_subnet(supernet: Supernet, subnet: Subnet, mole: MoLEModel | None = None,
                deltas: Deltas | None = None) -> FoldResult:
    """Router once -> merged deltas -> standalone ViT. Without `mole`: the plain subnet (the no-LoRA baseline).

    `deltas` (instead of `mole`): weight updates of the subnet's sliced shape already computed, e.g. a specialize
    run's final deltas (`taslora_core.specialize.read_specialized`), folded exactly as the routed experts are."""
    if deltas is not None:
        if mole is not None:
            raise ValueError("fold_subnet takes the experts (mole) or precomputed deltas, not both")
        return FoldResult(materialize(supernet, subnet, deltas), None)
    if mole is None:
        return FoldResult(materialize(supernet, subnet), None)
    routing = mole.routing(subnet).detach()
    deltas = mole.experts.deltas(subnet, routing)
    return FoldResult(materialize(supernet, subnet, deltas), routing.cpu())


class _LoRABranchLinear(nn.Module):
    """y = x W^T + b + ((x D^T) * s) U^T with s = p_k alpha / r per expert column, p read at call time.

    With a shared down-projection (factorised experts) D holds it once (r rows) and x D^T is repeated once per
    part, which equals the concatenated form with D repeated (`ExpertSet.sliced_factors`)."""

    def __init__(self, base: nn.Linear, u: torch.Tensor, d: torch.Tensor, owner: "UnmergedMoLEViT", block: int,
                 layer: int, parts: int = 1) -> None:
        super().__init__()
        self.base = base
        self.U = nn.Parameter(u.detach().clone(), requires_grad=False)
        self.D = nn.Parameter(d.detach().clone(), requires_grad=False)
        self._owner = [owner]  # a list, so the owner is not registered as a child module
        self.block, self.layer, self.parts = block, layer, parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self._owner[0]
        scale = column_scale(owner.current_routing[self.block, self.layer], owner.scale, owner.rank)
        down = x @ self.D.t()
        if self.parts > 1:
            down = down.repeat(*([1] * (down.dim() - 1)), self.parts)
        return self.base(x) + (down * scale) @ self.U.t()


class UnmergedMoLEViT(nn.Module):
    """The subnet with experts as run-time LoRA branches and the routing (router, hard group routing or the
    factorised experts' architecture weights) evaluated on every forward; every expert structure."""

    def __init__(self, supernet: Supernet, subnet: Subnet, mole: MoLEModel) -> None:
        super().__init__()
        self.subnet = subnet
        self.base = materialize(supernet, subnet)
        self.router = mole.router
        self.rank, self.scale = mole.experts.rank, mole.experts.scale
        parts = mole.experts.num_experts if mole.experts.shared_down else 1
        self.current_routing = torch.empty(0)
        for b, block in enumerate(self.base.blocks):
            d = block_dims(supernet.space, subnet, b)
            for i, layer in enumerate(LINEAR_LAYERS):
                parent_path, _, attr = LINEAR_PATHS[layer].rpartition(".")
                parent = block.get_submodule(parent_path) if parent_path else block
                u, dn = mole.experts.sliced_factors(layer, [b], d)
                down = dn[0][: dn.shape[1] // parts]  # a shared D: its first copy
                setattr(parent, attr, _LoRABranchLinear(getattr(parent, attr), u[0], down, self, b, i, parts))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Route (every call), then run the ViT with LoRA branches."""
        self.current_routing = self.router(self.subnet)
        return self.base(x)


@torch.no_grad()
def check_parity(
    folded: nn.Module,
    references: dict[str, nn.Module | object],
    inputs: dict[str, torch.Tensor],
    tolerance: float = 1e-5,
) -> dict[str, dict[str, float]]:
    """Max abs difference of `folded` vs each reference on each input set; raises ParityError above tolerance.

    `references` maps a name to a callable taking images (e.g. the unmerged MoLE model, or a lambda running the
    MoLE supernet with experts merged at run time).
    """
    report: dict[str, dict[str, float]] = {}
    worst = 0.0
    for ref_name, ref in references.items():
        report[ref_name] = {}
        for in_name, x in inputs.items():
            diff = (folded(x) - ref(x)).abs().max().item()  # type: ignore[operator]
            report[ref_name][in_name] = diff
            worst = max(worst, diff)
    if not worst <= tolerance:
        raise ParityError(f"folded model differs from run-time MoLE by {worst:.3g} > {tolerance:g}: {report}")
    return report
