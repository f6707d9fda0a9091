"""The model-based fitness of the search: a checkpoint and its held-out split -> `fitness_fn(subnet)`.

Per candidate: the router runs once, the routed experts are folded into the sliced weights
(`evaluate.folded_tensors`), then plain forward passes run over validation batches that were built once and
are reused for every candidate. For Fashion-MNIST the normalised validation tensors are materialised up front
(10,000 x 1 x 28 x 28 floats = 31 MB), so data loading costs nothing per candidate.

Under torch.distributed each rank evaluates its shard of the validation set (indices r, r + W, ...) and
`evaluate()` all-reduces the sums, so every rank sees the same fitness and runs the same evolution.
(Formerly `taslora_core.search_fitness`.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from taslora_core import data as D
from taslora_core.analysis import routing_entropy
from taslora_core.distributed import DistContext
from taslora_core.evaluate import evaluate
from taslora_core.run_data import RecordedData, resolve_run_data
from taslora_core.run_io import LoadedCheckpoint
from taslora_core.search.config import check_metric
from taslora_core.subnet import Subnet

MATERIALISE_LIMIT_BYTES = 2 << 30
"""Folder data whose normalised validation tensors would exceed this is streamed per candidate instead."""


@dataclass
class ValData:
    """Validation batches of this rank plus where they came from."""

    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    total: int  # images in the whole (all-rank) validation set
    local: int  # images of this rank's shard
    data_cfg: D.DataConfig
    split: dict[str, Any]
    split_source: str  # a path, or "carved with seed N"
    data_source: str  # "recorded with the checkpoint" or "--data"
    materialised: bool
    info: dict[str, Any] = field(default_factory=dict)


def load_val_data(
    ckpt: LoadedCheckpoint,
    data: str | None = None,
    val_subset: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    val_size: int = 10000,
    device: str | torch.device = "cpu",
    ctx: DistContext | None = None,
    num_workers: int = 2,
) -> ValData:
    """This rank's validation batches: the split saved with the run (or carved with `seed`), built once.

    `ctx` says which shard is this rank's (default: a single process, the whole split)."""
    rank, world_size = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    # --data keeps the recorded recipe, sized for the model; the saved split is reused whatever the data
    run_data = resolve_run_data(ckpt.supernet.space, RecordedData.of_checkpoint(ckpt), data,
                                data_override="keep_recipe", fit_space=True, reuse_split="always")
    cfg, data_source, split = run_data.config, run_data.data_source, run_data.split
    if split is not None:
        split_source = str(run_data.split_path)
    else:
        split_source = f"carved from the training set with seed {seed} ({val_size} images)"
    bundle = D.build_data(cfg, val_size=val_size, seed=seed, val_subset=val_subset, split=split)
    check_classes(bundle.num_classes, ckpt.supernet.space, data)
    total = len(bundle.val)
    if total == 0:
        raise D.DataUnavailable("the validation split is empty; train with a held-out split or lower --val-subset")
    shard = torch.arange(rank, total, world_size)
    materialised = False
    if bundle.kind == "fmnist":
        images = D.normalize_batch(bundle.val.images[shard], cfg).to(device)
        labels = bundle.val.labels[shard].to(device)
        batches: Iterable = list(zip(images.split(batch_size), labels.split(batch_size)))
        materialised = True
    else:
        loaders = D.make_loaders(bundle, cfg, batch_size, rank=rank, world_size=world_size, seed=seed,
                                 num_workers=num_workers, eval_batch_size=batch_size)
        per_image = cfg.in_chans * cfg.img_size * cfg.img_size * 4
        if len(shard) * per_image <= MATERIALISE_LIMIT_BYTES:
            batches = [(x.to(device), y.to(device)) for x, y in loaders.val]
            materialised = True
        else:
            batches = loaders.val
    return ValData(batches=batches, total=total, local=len(shard), data_cfg=cfg, split=bundle.split,
                   split_source=split_source, data_source=data_source, materialised=materialised)


def check_classes(num_classes: int, space: Any, data: str | None) -> None:
    """Refuse data whose class count is not the checkpoint's: its head scores `space.num_classes` classes, so the
    losses of a search on other labels would rank subnets on nonsense (DataUnavailable: one line, exit 2)."""
    if num_classes != space.num_classes:
        given = f"--data {data}" if data is not None else "the data recorded with the checkpoint"
        raise D.DataUnavailable(
            f"{given} has {num_classes} classes but the checkpoint's search space '{space.name}' has "
            f"{space.num_classes} (its head scores {space.num_classes} classes); search with data of the same "
            f"{space.num_classes} classes (or drop --data to use the checkpoint's), or train a checkpoint on this "
            "data first (taslora supernet train / taslora train with a space whose num_classes matches)")


class _Routed:
    """Hands evaluate() the deltas of routing weights computed already, so the router runs once per subnet."""

    def __init__(self, mole: Any, probs: torch.Tensor) -> None:
        self.mole, self.probs = mole, probs

    def deltas(self, subnet: Subnet):
        return self.mole.experts.deltas(subnet, self.probs)


class CheckpointFitness:
    """fitness_fn for EvolutionSearch: validation loss (or top-1 error) of a subnet, lower is better.

    Returns {'fitness', 'loss', 'top1', 'routing_entropy', 'eval_s'}. With metric 'top1' the fitness is the
    top-1 error 1 - top1 (AutoFormer ranks by top-1 accuracy; lower error is the same order).
    `routing_entropy` is None without experts (plain supernet or --no-experts).
    """

    def __init__(self, ckpt: LoadedCheckpoint, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 metric: str = "loss", use_experts: bool = True, device: str | torch.device | None = None) -> None:
        self.ckpt, self.batches, self.metric = ckpt, batches, check_metric(metric)
        self.use_experts = bool(use_experts and ckpt.mole is not None)
        self.device = device
        self.calls = 0

    @torch.no_grad()
    def __call__(self, subnet: Subnet) -> dict[str, Any]:
        start = time.perf_counter()
        mole = self.ckpt.mole if self.use_experts else None
        entropy, routed = None, None
        if mole is not None:
            mole.eval()
            probs = mole.routing(subnet)  # the router's one run for this subnet
            entropy = routing_entropy(probs)
            routed = _Routed(mole, probs)
        result = evaluate(self.ckpt.supernet, subnet, self.batches, mole=routed,  # type: ignore[arg-type]
                          use_experts=routed is not None, device=self.device)
        self.calls += 1
        fitness = result.loss if self.metric == "loss" else 1.0 - result.top1
        return {
            "fitness": fitness if math.isfinite(fitness) else math.inf,
            "loss": result.loss,
            "top1": result.top1,
            "count": result.count,
            "routing_entropy": entropy,
            "eval_s": time.perf_counter() - start,
        }

