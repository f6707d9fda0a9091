"""The settings of a training run: the single source of the training commands' defaults and help.

`TrainConfig` holds what every training command shares, `SupernetTrainConfig` and `MoLETrainConfig` add their own.
A run records its config in `train_config.json` (`to_dict`) and a resumed run reads it back (`from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taslora_core.train.recipes import recipe_help
from taslora_core.workspace import DEFAULT_WORKDIR

MODES = ("mole", "single-lora", "finetune")
# Options that belong to one invocation, not to the run: a resumed run takes them from the new call.
RUNTIME_FIELDS = ("quiet", "device", "threads", "num_workers", "workdir")


def setting(default: Any, help: str, flag: str | None = None, cli_type: Any = None) -> Any:
    """A config field with its command-line documentation: the single source of the option's default and help.

    `help` (with units) documents the option; `flag` is its spelling when it is not `--<name-with-dashes>`
    (e.g. "--amp/--no-amp"); `cli_type` is its command-line type when it differs from the field's (a str field
    read as a Path). The CLI (`taslora_cli.config_options`) builds its options from this metadata; fields made
    with plain defaults have no option of their own.
    """
    return field(default=default, metadata={"help": help, "flag": flag, "cli_type": cli_type})


@dataclass
class TrainConfig:
    """Settings every training command shares."""

    workdir: str = str(DEFAULT_WORKDIR)  # the CLI's shared --workdir option
    seed: int = 0  # the CLI's shared --seed option
    epochs: int = setting(10, "Training epochs.")
    batch_size: int = setting(128, "Images per step on each rank (total = this x ranks).")
    data: str = setting(
        "fmnist", "'fmnist' (Fashion-MNIST, Debian package) or an ImageNet-style folder PATH/{train,val}/<class>/*.")
    val_size: int = setting(10000, "Held-out validation images carved from the training set (capped at 20%).")
    val_subset: int | None = setting(None, "Evaluate on the first N held-out images only (epoch ends and summary).")
    train_subset: int | None = setting(
        None, "Train on the first N images of the (seeded, shuffled) training split only.")
    # None: the data preset's value
    mixup: float | None = setting(None, "Mixup alpha (default: the data preset's: 0 for fmnist, 0.8 for folders).")
    cutmix: float | None = setting(None, "CutMix alpha (default: preset's: 0 fmnist, 1.0 folders).")
    smoothing: float | None = setting(None, "Label smoothing (default: preset's 0.1).")
    auto_augment: str | None = setting(  # "none" switches it off
        None, "timm auto-augment policy for folder data, or 'none' (default: preset's rand-m9-mstd0.5-inc1 for folders).")
    re_prob: float | None = setting(
        None, "Random-erasing probability for folder data (default: preset's 0.25 for folders).")
    drop_path: float = setting(0.1, "Max stochastic-depth rate (AutoFormer 0.1).")
    warmup_epochs: int = setting(1, "Warm-up epochs.")
    weight_decay: float = setting(0.05, "AdamW weight decay.")
    min_lr: float = setting(1e-5, "Learning rate at the end of the cosine.")
    device: str = setting("auto", "auto (CUDA if available), cpu, cuda or cuda:N.")
    amp: bool | None = setting(None, "bf16 autocast (default: on for CUDA, off on CPU).", flag="--amp/--no-amp")
    threads: int | None = setting(None, "torch CPU threads (default: torch's choice).")
    save_every_steps: int = setting(0, "Also checkpoint every N steps (0: only at epoch ends).")
    log_every: int = setting(10, "Write a metrics.jsonl step record every N steps.")
    clip_grad: float | None = setting(
        None, "Clip the gradient norm to this value (default: no clipping, as AutoFormer).")
    eval_batch_size: int = setting(512, "Batch size of evaluation.")
    num_workers: int = setting(4, "Data-loader workers for folder data.", flag="--workers")
    summary_subnets: int = setting(3, "Random subnets evaluated in summary.json besides the largest and smallest.")
    name: str | None = setting(None, "Suffix of the run folder name.")
    quiet: bool = setting(False, "No progress bars.", flag="--quiet")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "TrainConfig":
        """Inverse of `to_dict` (unknown keys, e.g. options of older versions, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass
class SupernetTrainConfig(TrainConfig):
    """`taslora supernet train`: AutoFormer's recipe (`autoformer.md` s6)."""

    space: str = setting("fmnist", "Search space preset (fmnist, autoformer-t/s/b) or YAML.")
    lr: float = setting(
        5e-4, "Base learning rate per 512 images (AutoFormer 5e-4); the run uses lr x total batch / 512.")
    warmup_lr: float = setting(1e-6, "Learning rate at the start of warm-up.")


@dataclass
class MoLETrainConfig(TrainConfig):
    """`taslora train`: experts + router on a frozen supernet (or a baseline, see `mode`)."""

    supernet: str | None = setting(
        None, "Supernet run folder (default: the newest non-fine-tuned supernet run in --workdir).",
        cli_type=Path | None)
    mode: str = setting(
        "mole", "mole (TAS-LoRA), single-lora (K=1 baseline) or finetune (full fine-tuning baseline; writes a "
        "supernets run).")
    experts: int | None = setting(None, "Experts K per layer (default: one per architecture group).")
    rank: int = setting(8, "LoRA rank r of every expert.")
    lora_alpha: float | None = setting(
        None, "(recipe) LoRA scale numerator: an expert adds (alpha / rank) U D (paper: 1, i.e. U D / r).")
    router: str = setting("lstm", "Router core: lstm, gru or mlp (block-wise, no recurrence).")
    router_init: str = setting("group", "group (group-wise init, TAS-LoRA) or random.")
    router_depth: bool = setting(
        False, "Feed the depth to the router too (groups then include depth).", flag="--router-depth/--no-router-depth")
    router_position_heads: bool = setting(
        False, "One router head per (group, block position) instead of one per group shared by every position.",
        flag="--router-position-heads/--no-router-position-heads")
    beta: float = setting(3.0, "Group-wise init: bias of a group's own expert.")
    expert_lr: float | None = setting(None, "(recipe) Experts' AdamW LR (also the LR of --mode finetune; paper 5e-4).")
    router_lr: float | None = setting(None, "(recipe) Router's SGD LR (momentum 0.9; paper 0.1).")
    warmup_start_lr: float = setting(1e-5, "Expert LR at the start of warm-up.")
    warmup_epochs: int = setting(
        1, "Epochs with the router frozen and the expert LR rising linearly from --warmup-start-lr (paper: 5 of 50).")
    min_lr: float = setting(1e-6, "Expert LR at the end of the cosine (the router's goes to 0).")
    momentum: float = 0.9  # the router's SGD momentum (no option)
    # the recipe and the settings it bundles (taslora_core.train.recipes); None: the recipe's value
    recipe: str | None = setting(None, recipe_help())
    expert_structure: str | None = setting(
        None, "(recipe) mixture (K experts, each its own U and D; paper) or factorised (a shared D, a shared U and one "
        "U per heads / MLP-ratio and embed-dim value, weighted by the block's architecture).")
    routing: str | None = setting(
        None, "(recipe) learned (the router trains after warm-up; paper), frozen (never trains) or hard (one-hot "
        "routing to the block's group).")
    router_init_mass: float | None = setting(
        None, "(recipe) Group-wise init: the own expert's routing mass at step 0, beta = ln(p (K-1) / (1-p)); "
        "0 uses --beta (paper).")
    sampling: str | None = setting(
        None, "(recipe) uniform (one random subnet per step; paper) or sandwich (largest + smallest + "
        "--sandwich-random random subnets per step).")
    sandwich_random: int | None = setting(None, "(recipe) Random subnets per sandwich step (recipe sandwich: 1).")
    distill: bool | None = setting(
        None, "(recipe) Sandwich: train all but the largest subnet on the largest's soft logits (KL) instead of the "
        "labels.", flag="--distill/--no-distill")
    distill_temperature: float = setting(1.0, "Softmax temperature of the in-place distillation.")
    mi_weight: float | None = setting(
        None, "(recipe) Weight of the routing mutual-information term -w (H(E) - H(E|group)) in the loss (paper 0).")
    lora_plus: float | None = setting(
        None, "(recipe) LoRA+: learning rate of every up-projection U as a multiple of the experts' LR (paper 1).")
