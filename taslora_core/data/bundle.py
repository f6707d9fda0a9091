"""`build_data`: the train / held-out val / test sources of Fashion-MNIST or an image folder, and the split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import torch

from taslora_core.data.config import DataConfig
from taslora_core.data.fmnist import FMNIST_CLASSES, load_fmnist
from taslora_core.data.folders import read_image_folders
from taslora_core.data.split import resolve_split, split_indices, subset_val

__all__ = ["TensorSource", "FolderSource", "Source", "DataBundle", "build_data"]

@dataclass
class TensorSource:
    """In-memory images: uint8 ``images`` (N, C, H, W), int64 ``labels`` (N,), and ``indices`` (N,)
    of each row in the original split it was taken from."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class FolderSource:
    """Image files: ``samples`` as (path, label) pairs, ``indices`` into the original folder listing."""

    samples: list[tuple[str, int]]
    indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels of the samples."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)


Source = Union[TensorSource, FolderSource]


@dataclass
class DataBundle:
    """train / val (carved from the training set) / test sources, the split record and class names."""

    train: Source
    val: Source
    test: Source
    split: dict[str, Any]
    num_classes: int
    classes: list[str] = field(default_factory=list)
    kind: str = "fmnist"


def _tensor_source(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> TensorSource:
    return TensorSource(images=images[idx].unsqueeze(1), labels=labels[idx], indices=idx)


def _build_fmnist(cfg: DataConfig, val_size: int, seed: int, train_subset: int | None,
                  val_subset: int | None, split: dict[str, Any] | None) -> DataBundle:
    train_x, train_y = load_fmnist("train")
    test_x, test_y = load_fmnist("test")
    rec = resolve_split(len(train_y), "fmnist", val_size, seed, train_subset, split)
    train_idx, val_idx = split_indices(rec)
    val_idx = subset_val(val_idx, val_subset)
    return DataBundle(
        train=_tensor_source(train_x, train_y, train_idx),
        val=_tensor_source(train_x, train_y, val_idx),
        test=_tensor_source(test_x, test_y, torch.arange(len(test_y))),
        split=rec, num_classes=len(FMNIST_CLASSES), classes=list(FMNIST_CLASSES), kind="fmnist",
    )


def _folder_source(samples: Sequence[tuple[str, int]], idx: torch.Tensor) -> FolderSource:
    return FolderSource(samples=[tuple(samples[i]) for i in idx.tolist()], indices=idx)


def _build_folder(cfg: DataConfig, val_size: int, seed: int, train_subset: int | None,
                  val_subset: int | None, split: dict[str, Any] | None) -> DataBundle:
    root = Path(cfg.data)
    train_ds, test_ds = read_image_folders(root)
    n_cls = len(train_ds.classes)
    if cfg.num_classes is not None and cfg.num_classes != n_cls:
        raise ValueError(f"cfg.num_classes={cfg.num_classes} but {root} has {n_cls} classes")
    rec = resolve_split(len(train_ds.samples), str(root), val_size, seed, train_subset, split)
    train_idx, val_idx = split_indices(rec)
    val_idx = subset_val(val_idx, val_subset)
    return DataBundle(
        train=_folder_source(train_ds.samples, train_idx),
        val=_folder_source(train_ds.samples, val_idx),
        test=_folder_source(test_ds.samples, torch.arange(len(test_ds.samples))),
        split=rec, num_classes=n_cls, classes=list(train_ds.classes), kind="folder",
    )


def build_data(cfg: DataConfig, val_size: int = 10000, seed: int = 0, train_subset: int | None = None,
               val_subset: int | None = None, split: dict[str, Any] | None = None) -> DataBundle:
    """Load the data named by ``cfg.data`` and carve the held-out validation set from its training set.

    ``val_size`` is capped at 20% of the training set. ``train_subset`` keeps only the first N training
    indices (of the seeded, shuffled remainder); ``val_subset`` the first M validation indices. With
    ``split`` (from :func:`load_split`) the saved split is reused exactly and ``val_size``/``seed`` are
    ignored. ``test`` is Fashion-MNIST's t10k set or the folder's ``val/``.
    """
    builder = _build_fmnist if cfg.is_fmnist else _build_folder
    return builder(cfg, val_size, seed, train_subset, val_subset, split)
