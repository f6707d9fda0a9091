"""Resumable, rank-sharded loaders: tensor indexing for in-memory data, a torch DataLoader for image files."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, NamedTuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from taslora_core.data.batch import augment_batch, normalize_batch
from taslora_core.data.bundle import DataBundle, FolderSource, TensorSource, build_data
from taslora_core.data.config import DataConfig, make_transforms
from taslora_core.data.order import ShardedOrder

__all__ = ["TensorLoader", "FolderLoader", "Loaders", "make_loaders", "load_test_batches"]

def _batch_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    state = np.random.SeedSequence([seed, epoch, rank, position]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class _OrderedLoader:
    """Shared bookkeeping: a ShardedOrder, batch size, drop_last and resumable state."""

    def __init__(self, order: ShardedOrder, batch_size: int, drop_last: bool, resumable: bool) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.order, self.batch_size, self.drop_last, self.resumable = order, batch_size, drop_last, resumable

    def __len__(self) -> int:
        """Batches in a full epoch of this rank."""
        n = self.order.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def epoch(self) -> int:
        """Current epoch of the order."""
        return self.order.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (keeps a resumed mid-epoch position when ``epoch`` is the current one)."""
        self.order.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        """Epoch and position of the order, for checkpoints."""
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from :meth:`state_dict`; the next iteration continues mid-epoch."""
        self.order.load_state_dict(state)

    def _start(self) -> None:
        if not self.resumable:
            self.order.rewind()

    def _finish(self) -> None:
        if self.resumable:
            self.order.next_epoch()
        else:
            self.order.rewind()

    def _keep(self, n: int) -> bool:
        return n > 0 and (n == self.batch_size or not self.drop_last)


class TensorLoader(_OrderedLoader):
    """Batches from an in-memory ``TensorSource`` by tensor indexing, augmented per batch when training.

    Yields ``(images float32 (B, C, img_size, img_size), labels int64 (B,))`` on the CPU.
    """

    def __init__(self, source: TensorSource, cfg: DataConfig, batch_size: int, order: ShardedOrder,
                 train: bool = False, drop_last: bool = False) -> None:
        super().__init__(order, batch_size, drop_last, resumable=train)
        self.source, self.cfg, self.train = source, cfg, train

    def _make_batch(self, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.source.images[sel]
        if self.train:
            gen = torch.Generator()
            gen.manual_seed(_batch_seed(self.order.seed, self.order.epoch, self.order.rank, self.order.position))
            images = augment_batch(images, gen, pad=self.cfg.pad, hflip=self.cfg.hflip)
        return normalize_batch(images, self.cfg), self.source.labels[sel]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._start()
        remaining = self.order.indices()
        for sel in torch.split(remaining, self.batch_size):
            if not self._keep(len(sel)):
                break
            batch = self._make_batch(sel)
            self.order.advance(len(sel))
            yield batch
        self._finish()


class _ImageDataset(Dataset):
    """(path, label) samples read with torchvision's default loader and a transform (picklable)."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[index]
        return self.transform(default_loader(path)), label


class FolderLoader(_OrderedLoader):
    """A torch DataLoader over a ``FolderSource`` with a ShardedOrder sampler and resumable state."""

    def __init__(self, source: FolderSource, transform: Callable, batch_size: int, order: ShardedOrder,
                 train: bool = False, drop_last: bool = False, num_workers: int = 2) -> None:
        super().__init__(order, batch_size, drop_last, resumable=train)
        self.loader = DataLoader(
            _ImageDataset(source.samples, transform), batch_size=batch_size, sampler=order,
            num_workers=num_workers, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
            persistent_workers=num_workers > 0,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._start()
        for images, labels in self.loader:
            self.order.advance(len(labels))
            yield images, labels
        self._finish()


class Loaders(NamedTuple):
    """The three loaders returned by :func:`make_loaders`."""

    train: Union[TensorLoader, FolderLoader]
    val: Union[TensorLoader, FolderLoader]
    test: Union[TensorLoader, FolderLoader]


def _orders(bundle: DataBundle, rank: int, world_size: int, seed: int) -> tuple[ShardedOrder, ...]:
    train = ShardedOrder(len(bundle.train), seed, rank, world_size, shuffle=True, pad=True)
    val = ShardedOrder(len(bundle.val), seed, rank, world_size, shuffle=False, pad=False)
    test = ShardedOrder(len(bundle.test), seed, rank, world_size, shuffle=False, pad=False)
    return train, val, test


def make_loaders(bundle: DataBundle, cfg: DataConfig, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, num_workers: int = 2, eval_batch_size: int | None = None) -> Loaders:
    """Build ``Loaders(train, val, test)`` for this rank.

    train: shuffled per epoch from ``seed``, padded across ranks, ``drop_last=True``, augmented,
    resumable. val/test: fixed order, disjoint rank shards, last batch kept. ``num_workers`` applies to
    folder data only (Fashion-MNIST batches are built in the calling process).
    """
    eval_bs = eval_batch_size or batch_size
    train_o, val_o, test_o = _orders(bundle, rank, world_size, seed)
    if bundle.kind == "fmnist":
        return Loaders(
            TensorLoader(bundle.train, cfg, batch_size, train_o, train=True, drop_last=True),
            TensorLoader(bundle.val, cfg, eval_bs, val_o),
            TensorLoader(bundle.test, cfg, eval_bs, test_o),
        )
    if cfg.in_chans != 3:
        raise ValueError(f"folder data is read as RGB; in_chans must be 3, got {cfg.in_chans}")
    train_tf, eval_tf = make_transforms(cfg)
    return Loaders(
        FolderLoader(bundle.train, train_tf, batch_size, train_o, True, True, num_workers),
        FolderLoader(bundle.val, eval_tf, eval_bs, val_o, num_workers=num_workers),
        FolderLoader(bundle.test, eval_tf, eval_bs, test_o, num_workers=num_workers),
    )


def load_test_batches(cfg: DataConfig, batch_size: int = 500,
                      limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole test set of ``cfg.data`` (Fashion-MNIST's t10k, or a folder's ``val/``) as evaluation batches,
    in file order; with ``limit``, only its first ``limit`` images (and only those are read from disk). The test
    set does not depend on the held-out split, so only a token one is carved."""
    bundle = build_data(cfg, val_size=10)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"the number of test images must be >= 1, got {limit}")
        test = bundle.test  # a TensorSource or FolderSource: every field is indexed by image
        bundle.test = type(test)(**{f.name: getattr(test, f.name)[:limit] for f in dataclasses.fields(test)})
    return list(make_loaders(bundle, cfg, batch_size=batch_size, num_workers=0).test)
