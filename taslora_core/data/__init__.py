"""Data sources, augmentation recipes, the held-out split and resumable sharded loaders.

One module per job; this package re-exports every public name (``from taslora_core.data import X``):

* ``errors``: ``DataUnavailable``; ``fmnist``: the Fashion-MNIST IDX reader; ``folders``: ImageFolder trees;
* ``config``: ``DataConfig`` presets and the timm transforms / mixup / loss they drive;
* ``split``: the held-out split record; ``bundle``: ``build_data`` (sources + split);
* ``order``: the per-rank sample order; ``batch``: in-memory batch augmentation; ``loaders``: the loaders.

Two kinds of data are supported:

* ``"fmnist"``: Fashion-MNIST read from Debian's ``dataset-fashion-mnist`` package (IDX files,
  gzip) under :data:`FMNIST_ROOT` (override with the environment variable ``TASLORA_FMNIST_DIR``).
  The uint8 images stay in memory as tensors; batches are produced by tensor indexing and augmented
  on the whole batch (random shift within a zero padding, horizontal flip). No worker processes.
* any other string: an ImageNet-style folder ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``
  read with ``torchvision.datasets.ImageFolder`` and transformed per image with
  ``timm.data.create_transform`` (AutoFormer's recipe by default).

Typical use::

    cfg = DataConfig.for_data("fmnist")                  # or DataConfig.for_data("/data/imagenet")
    bundle = build_data(cfg, val_size=10000, seed=0, train_subset=None)
    save_split(run_dir / "split.json", bundle.split)     # the search reuses it via build_data(split=...)
    loaders = make_loaders(bundle, cfg, batch_size=256, rank=rank, world_size=world, seed=0)
    mixup_fn, criterion = make_mixup(cfg, bundle.num_classes), make_train_loss(cfg)
    for epoch in range(loaders.train.epoch, epochs):      # resumes mid-epoch after load_state_dict
        loaders.train.set_epoch(epoch)
        for images, labels in loaders.train:
            if mixup_fn is not None:
                images, labels = mixup_fn(images, labels)  # soft targets for SoftTargetCrossEntropy
            loss = criterion(model(images), labels)
            ...
        ckpt["loader"] = loaders.train.state_dict()

Public API:

* ``DataUnavailable(RuntimeError)``: data missing or corrupt; the message is one line with the fix.
* ``FMNIST_ROOT``, ``FMNIST_CLASSES``, ``fmnist_root()``, ``load_fmnist(split, root=None)``.
* ``DataConfig`` with presets ``DataConfig.fmnist(**kw)``, ``DataConfig.autoformer(data, **kw)`` and
  ``DataConfig.for_data(data, **kw)``; ``make_transforms(cfg)``, ``make_mixup(cfg, num_classes=None)``,
  ``make_train_loss(cfg)``.
* ``make_split(num_total, val_size, seed, train_subset)``, ``split_indices(split)``,
  ``save_split(path, split)``, ``load_split(path)``.
* ``build_data(cfg, val_size=10000, seed=0, train_subset=None, val_subset=None, split=None) -> DataBundle``
  with ``train`` / ``val`` / ``test`` sources (``TensorSource`` or ``FolderSource``), ``split``,
  ``num_classes`` and ``classes``.
* ``load_test_batches(cfg, batch_size=500)``: the whole test set as evaluation batches (no split needed).
* ``shard_indices(...)`` and ``ShardedOrder`` (a ``torch.utils.data.Sampler``): the per-rank order.
* ``augment_batch(images, generator, pad, hflip)`` and ``normalize_batch(images, cfg)``.
* ``TensorLoader`` / ``FolderLoader``: iterables of ``(images float32 (B,C,H,W), labels int64 (B,))``
  with ``set_epoch``, ``state_dict`` and ``load_state_dict``.
* ``make_loaders(bundle, cfg, batch_size, rank=0, world_size=1, seed=0, num_workers=2,
  eval_batch_size=None) -> Loaders(train, val, test)``.

Order and resumption: every rank draws the same permutation from ``seed + epoch``, pads it to a
multiple of ``world_size`` and takes every ``world_size``-th index from ``rank``. The training loader
records ``{"epoch", "position"}`` (samples of this rank's shard already yielded) and continues from
there after ``load_state_dict``; a finished epoch moves it to the next epoch, position 0.
``set_epoch(e)`` resets the position only when ``e`` differs from the current epoch, so calling it at
the top of every epoch is safe after a resume. Fashion-MNIST augmentation draws from a generator
seeded by (seed, epoch, rank, position), so a resumed run reproduces the same augmented batches.

Evaluation loaders keep a fixed order (no shuffle), no padding and never drop the last batch. Under
DDP rank ``r`` evaluates indices ``r, r + world_size, r + 2 * world_size, ...``: the shards are
disjoint and together cover the set exactly once. Combine by summing counts, not by averaging
per-rank accuracies: ``all_reduce(tensor([correct, seen]), SUM)`` then ``correct / seen``.

Mixup is applied by the training loop (as in AutoFormer), not by the loaders; timm's ``Mixup``
in 'batch' mode needs an even batch size, which the training loaders guarantee with
``drop_last=True`` and an even ``batch_size``.
"""

from __future__ import annotations

from taslora_core.data.batch import augment_batch, normalize_batch
from taslora_core.data.bundle import DataBundle, FolderSource, Source, TensorSource, build_data
from taslora_core.data.config import (
    AUTOFORMER_RAND_AUGMENT, IMAGENET_MEAN, IMAGENET_STD, DataConfig, make_mixup, make_train_loss, make_transforms,
)
from taslora_core.data.errors import DataUnavailable
from taslora_core.data.fmnist import (
    FMNIST_CLASSES, FMNIST_ENV, FMNIST_MEAN, FMNIST_ROOT, FMNIST_STD, fmnist_root, load_fmnist,
)
from taslora_core.data.loaders import FolderLoader, Loaders, TensorLoader, load_test_batches, make_loaders
from taslora_core.data.order import ShardedOrder, shard_indices
from taslora_core.data.split import effective_val_size, load_split, make_split, save_split, split_indices

__all__ = [
    "DataUnavailable",
    "FMNIST_ROOT",
    "FMNIST_ENV",
    "FMNIST_CLASSES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AUTOFORMER_RAND_AUGMENT",
    "fmnist_root",
    "load_fmnist",
    "DataConfig",
    "make_transforms",
    "make_mixup",
    "make_train_loss",
    "TensorSource",
    "FolderSource",
    "Source",
    "DataBundle",
    "effective_val_size",
    "make_split",
    "split_indices",
    "save_split",
    "load_split",
    "build_data",
    "shard_indices",
    "ShardedOrder",
    "augment_batch",
    "normalize_batch",
    "TensorLoader",
    "FolderLoader",
    "Loaders",
    "make_loaders",
    "load_test_batches",
]
