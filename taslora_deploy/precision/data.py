"""The images the precision steps use: calibration from the run's held-out validation split, the accuracy gate
from its test split. The calibration never sees a test image."""

from __future__ import annotations

from itertools import islice

import torch

from taslora_core import data as D
from taslora_core.run_data import RecordedData, resolve_run_data
from taslora_core.run_io import LoadedCheckpoint

__all__ = ["calibration_images", "gate_batches"]


def _run_config(ckpt: LoadedCheckpoint) -> tuple[D.DataConfig, dict | None]:
    """The run's DataConfig (sized for its model) and its saved held-out split (None: carved with seed 0)."""
    run = resolve_run_data(ckpt.supernet.space, RecordedData.of_checkpoint(ckpt), None,
                           data_override="keep_recipe", fit_space=True, reuse_split="always")
    return run.config, run.split


def calibration_images(ckpt: LoadedCheckpoint, n: int, batch_size: int = 256) -> torch.Tensor:
    """The first `n` images of the run's held-out validation split, normalised as the model expects."""
    if n < 1:
        raise ValueError(f"--calib-size must be >= 1, got {n}")
    cfg, split = _run_config(ckpt)
    bundle = D.build_data(cfg, split=split)
    if len(bundle.val) == 0:
        raise D.DataUnavailable("the run's validation split is empty: nothing to calibrate int8 on")
    if bundle.kind == "fmnist":
        return D.normalize_batch(bundle.val.images[:n], cfg)
    loaders = D.make_loaders(bundle, cfg, batch_size=min(batch_size, n), num_workers=0)
    images = torch.cat([x for x, _ in islice(loaders.val, -(-n // min(batch_size, n)))])
    return images[:n]


def gate_batches(ckpt: LoadedCheckpoint, n: int | None = None, batch_size: int = 500) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The run's test set (all of it, or its first `n` images: only those are read) as (images, labels) batches."""
    if n is not None and n < 1:
        raise ValueError(f"--gate-images must be >= 1, got {n}")
    cfg, _ = _run_config(ckpt)
    return D.load_test_batches(cfg, batch_size=batch_size, limit=n)
