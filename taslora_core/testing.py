"""Factories for tests and benchmarks (like `torch.testing`): MoLE models with random, non-trivial weights and
MoLE workspaces laid out like a training run, so the test suite and the benchmarks build them the same way.

Not used by the library itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from taslora_core import data as D
from taslora_core import workspace
from taslora_core.checkpoint import SUPERNET_WEIGHTS, file_sha256, save_supernet
from taslora_core.mole import MoLEConfig, MoLEModel
from taslora_core.mole_io import save_mole
from taslora_core.router import RouterConfig
from taslora_core.space import SearchSpace
from taslora_core.supernet import Supernet

# The held-out split every fmnist run carves from the 60,000 training images (the training default).
FMNIST_TRAIN_IMAGES, FMNIST_VAL_IMAGES = 60000, 10000
SPLIT_FILE = "split.json"  # the name training runs give their split (train.SPLIT_FILE)


@dataclass(frozen=True)
class MoLEWorkspace:
    """A workspace holding one supernet run and one MoLE run on it."""

    workdir: Path
    supernet_dir: Path
    mole_dir: Path


def random_mole(
    space: str | SearchSpace = "fmnist",
    seed: int = 0,
    expert_std: float | None = 0.3,
    up_only: bool = False,
    router_std: float | None = 0.5,
    head_std: float | None = None,
    alpha: float = 1.0,
) -> MoLEModel:
    """A MoLE model on a fresh supernet, in eval mode, whose experts really change the model.

    Fresh LoRA experts are zero (U starts at 0), so they are redrawn from N(0, `expert_std`): every expert
    parameter, or only the up projections U with `up_only` (D keeps LoRA's Kaiming init). `expert_std=None`
    keeps the fresh (zero) experts. `router_std` draws the router's heads from N(0, router_std) (None: the default
    router init); `head_std` redraws the supernet's classifier weights so that subnets differ clearly in loss.
    Deterministic in `seed`.
    """
    torch.manual_seed(seed)
    space = SearchSpace.preset(space) if isinstance(space, str) else space
    supernet = Supernet(space)
    if head_std is not None:
        with torch.no_grad():
            supernet.head.weight.normal_(0, head_std)
    router = RouterConfig() if router_std is None else RouterConfig(init="random", random_init_std=router_std)
    model = MoLEModel(supernet, MoLEConfig(router=router, alpha=alpha))
    if expert_std is not None:
        with torch.no_grad():
            for name, p in model.experts.named_parameters():
                if not up_only or name.endswith("_U"):
                    p.normal_(0, expert_std)
    return model.eval()


def save_mole_workspace(root: str | Path, model: MoLEModel, name: str = "fresh", fmnist_data: bool = True) -> MoLEWorkspace:
    """Save `model`'s supernet and the MoLE model as two runs under `root` (supernets/ and mole/), with what a
    training run records: the supernet's path and sha256 and, with `fmnist_data`, the fmnist data settings and
    the default held-out split (split.json), so search and export find their validation and real images."""
    root = Path(root)
    extra: dict = {}
    split = None
    if fmnist_data:
        extra = {"data": D.DataConfig.fmnist().to_dict(), "split": SPLIT_FILE}
        split = D.make_split(FMNIST_TRAIN_IMAGES, FMNIST_VAL_IMAGES, 0, data="fmnist")
    sdir = workspace.new_run(root, "supernets", name)
    if split is not None:
        D.save_split(sdir / SPLIT_FILE, split)
    save_supernet(sdir, model.supernet, extra)
    mdir = workspace.new_run(root, "mole", name)
    if split is not None:
        D.save_split(mdir / SPLIT_FILE, split)
    save_mole(mdir, model, {**extra, "supernet_dir": str(sdir.resolve()),
                            "supernet_sha256": file_sha256(sdir / SUPERNET_WEIGHTS)})
    return MoLEWorkspace(workdir=root, supernet_dir=sdir, mole_dir=mdir)
