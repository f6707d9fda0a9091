"""The checks and set-up steps both trainers run before their loop (and `evaluate_run` shares the class check)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from taslora_core import data as D
from taslora_core.distributed import DistContext, init_distributed, shutdown
from taslora_core.run_data import data_config_for
from taslora_core.space import SearchSpace
from taslora_core.train.config import TrainConfig
from taslora_core.train.loop import LoopConfig

Log = Callable[[str], None]


def data_config(cfg: TrainConfig, space: SearchSpace) -> D.DataConfig:
    """The data recipe of a new run: `cfg.data` with the config's augmentation overrides."""
    return data_config_for(cfg.data, space, cfg.to_dict())


def check_classes(bundle: D.DataBundle, space: SearchSpace) -> None:
    """The data's class count must be the search space's."""
    if bundle.num_classes != space.num_classes:
        raise ValueError(
            f"the data has {bundle.num_classes} classes but search space '{space.name}' has {space.num_classes}; "
            "use a space (YAML) whose num_classes matches the data"
        )


def check_common(cfg: TrainConfig, dc: D.DataConfig) -> None:
    """Reject settings no training run can use (one-line messages naming the option)."""
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if not 0 <= cfg.warmup_epochs <= cfg.epochs:
        raise ValueError(f"--warmup-epochs must be in 0..--epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
    if dc.mixup_active and cfg.batch_size % 2:
        raise ValueError(f"mixup/cutmix needs an even --batch-size, got {cfg.batch_size}")
    if cfg.save_every_steps < 0:
        raise ValueError("--save-every-steps must be >= 0")
    if not 0.0 <= cfg.drop_path < 1.0:
        raise ValueError(f"--drop-path must be in [0, 1), got {cfg.drop_path}")


def use_amp(cfg: TrainConfig, ctx: DistContext) -> bool:
    """bf16 autocast: the config's choice, else on for CUDA and off on CPU."""
    return (ctx.device.type == "cuda") if cfg.amp is None else bool(cfg.amp)


def quiet_log(log: Log | None, ctx: DistContext) -> Log:
    """`log` on rank 0, a no-op elsewhere (and when no log is given)."""
    return log if (log is not None and ctx.is_main) else (lambda _m: None)


@contextmanager
def training_process(cfg: TrainConfig, log: Log | None) -> Iterator[tuple[DistContext, Log]]:
    """Apply `--threads`, join the process group (torchrun) or run alone, and leave it at the end: yields the
    distributed context and the rank-0 log."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    ctx = init_distributed(cfg.device)
    try:
        yield ctx, quiet_log(log, ctx)
    finally:
        shutdown(ctx)


def split_note(split: dict[str, Any], bundle: D.DataBundle) -> str:
    """'N train / M held-out val images (seed S)' for the log."""
    return f"{len(bundle.train)} train / {len(split['val_indices'])} held-out val images (seed {split['seed']})"


def loop_config(cfg: TrainConfig, amp: bool) -> LoopConfig:
    """The loop's share of the run's settings."""
    return LoopConfig(
        epochs=cfg.epochs, seed=cfg.seed, save_every_steps=cfg.save_every_steps, log_every=cfg.log_every,
        amp=amp, clip_grad=cfg.clip_grad, quiet=cfg.quiet,
    )
