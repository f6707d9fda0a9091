"""Process-group setup for `torchrun` and the gradient all-reduce every training loop uses.

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts a process group
(NCCL on CUDA, gloo on CPU); without that environment it returns a single-process context and touches nothing.

Why gradients are all-reduced by hand instead of wrapping the model in `DistributedDataParallel`:
the subnet changes every step, so the set of parameters that receive a gradient changes every step too
(blocks past the sampled depth are skipped; in MoLE training the router is frozen during warm-up, i.e. its
`requires_grad` flips mid-run, which DDP cannot follow because it registers its hooks once, at wrap time).
DDP copes with the first problem only through `find_unused_parameters=True`, which walks the autograd graph
every step, and not at all with the second. `all_reduce_grads` instead averages, after `backward()`, one flat
buffer holding every trainable parameter's gradient (zeros where a rank has none) plus a presence flag per
parameter and the loss. A parameter that no rank touched keeps `grad=None`, so the optimiser skips it exactly as
in a single-process run; one that some rank touched gets the average over all ranks (DDP's semantics). The same
subnet is sampled on every rank (seeded from (seed, epoch, step)), so the presence flags always agree in
practice; the flags only make the reduction robust if they ever did not. Cost: one all-reduce of the trainable
parameters per step (the LoRA experts and router for MoLE, a few MB), with no per-step graph traversal.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: its rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' (this rank's GPU) or 'cuda:N'."""
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} asked for CUDA but no CUDA device is available; use --device cpu")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name != "cpu":
        raise ValueError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistContext:
    """A context for this process; starts the process group when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (after a barrier so that no rank tears it down while others still use it)."""
    if ctx.distributed and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every rank (a path, a small dict)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_tensors(tensors: Sequence[torch.Tensor], ctx: DistContext) -> None:
    """Overwrite `tensors` with rank 0's values (identical start on every rank)."""
    if not ctx.distributed:
        return
    for t in tensors:
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def all_reduce_grads(params: Sequence[torch.nn.Parameter], loss: torch.Tensor, ctx: DistContext) -> float:
    """Average the gradients of `params` and the loss across ranks; return the mean loss as a float.

    See the module docstring for why this replaces DDP. Single process: just returns `loss.item()`.
    """
    if not ctx.distributed:
        return float(loss.detach().float().item())
    device = loss.device
    pieces, present = [], []
    for p in params:
        if p.grad is None:
            pieces.append(torch.zeros(p.numel(), device=device, dtype=torch.float32))
            present.append(0.0)
        else:
            pieces.append(p.grad.detach().reshape(-1).float())
            present.append(1.0)
    flags = torch.tensor(present, device=device, dtype=torch.float32)
    flat = torch.cat([*pieces, flags, loss.detach().float().reshape(1)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    world = float(ctx.world_size)
    tail = flat[-len(params) - 1 :].tolist()  # presence counts, then the loss sum
    mean_loss = tail[-1] / world
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if tail[i] > 0:
            grad = flat[offset : offset + n].view_as(p).div_(world).to(p.dtype)
            if p.grad is None:
                p.grad = grad.clone()
            else:
                p.grad.copy_(grad)
        offset += n
    return mean_loss
