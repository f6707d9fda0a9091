"""Data sources, augmentation recipes, the held-out split and resumable sharded loaders.

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

import dataclasses
import gzip
import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

if TYPE_CHECKING:
    from timm.data import Mixup

__all__ = [
    "DataUnavailable",
    "FMNIST_ROOT",
    "FMNIST_CLASSES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "fmnist_root",
    "load_fmnist",
    "DataConfig",
    "make_transforms",
    "make_mixup",
    "make_train_loss",
    "TensorSource",
    "FolderSource",
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
]

FMNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FMNIST_ENV = "TASLORA_FMNIST_DIR"
FMNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FMNIST_MEAN: tuple[float, ...] = (0.2860,)
FMNIST_STD: tuple[float, ...] = (0.3530,)
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
AUTOFORMER_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_FMNIST_ALIASES = ("fmnist", "fashion-mnist", "fashion_mnist")
_FOLDER_LAYOUT = "PATH/train/<class>/*.jpeg and PATH/val/<class>/*.jpeg"
_SPLIT_VERSION = 1


class DataUnavailable(RuntimeError):
    """Data is missing or corrupt. The message is always one line and says how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


def _install_hint() -> str:
    return (
        f"fix: `apt-get install dataset-fashion-mnist` (or set {FMNIST_ENV}), "
        f"or pass --data PATH for an ImageNet-style folder ({_FOLDER_LAYOUT})"
    )


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST IDX reader
# --------------------------------------------------------------------------------------------------


def fmnist_root() -> Path:
    """Directory of the Fashion-MNIST IDX files: ``$TASLORA_FMNIST_DIR`` if set, else ``FMNIST_ROOT``."""
    return Path(os.environ.get(FMNIST_ENV) or FMNIST_ROOT)


def _fmnist_paths(root: Path, split: str) -> tuple[Path, Path]:
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    return (root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz")


def _read_gzip(path: Path) -> bytes:
    if not path.is_file():
        raise DataUnavailable(f"Fashion-MNIST file not found: {path}; {_install_hint()}")
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataUnavailable(f"corrupt Fashion-MNIST file {path} ({exc}); {_install_hint()}") from exc


def _corrupt(path: Path, what: str) -> DataUnavailable:
    return DataUnavailable(
        f"corrupt Fashion-MNIST file {path}: {what}; "
        "reinstall with `apt-get install --reinstall dataset-fashion-mnist`"
    )


def _parse_idx_images(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 16:
        raise _corrupt(path, f"{len(raw)} bytes is shorter than the 16-byte IDX image header")
    magic, n, rows, cols = struct.unpack(">iiii", raw[:16])
    if magic != _IDX_IMAGES_MAGIC:
        raise _corrupt(path, f"bad magic number {magic} (expected {_IDX_IMAGES_MAGIC} for images)")
    if len(raw) != 16 + n * rows * cols:
        raise _corrupt(path, f"{len(raw) - 16} pixel bytes for {n}x{rows}x{cols} images")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def _parse_idx_labels(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 8:
        raise _corrupt(path, f"{len(raw)} bytes is shorter than the 8-byte IDX label header")
    magic, n = struct.unpack(">ii", raw[:8])
    if magic != _IDX_LABELS_MAGIC:
        raise _corrupt(path, f"bad magic number {magic} (expected {_IDX_LABELS_MAGIC} for labels)")
    if len(raw) != 8 + n:
        raise _corrupt(path, f"{len(raw) - 8} label bytes for {n} labels")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if n and int(labels.max()) >= len(FMNIST_CLASSES):
        raise _corrupt(path, f"label {int(labels.max())} outside 0..{len(FMNIST_CLASSES) - 1}")
    return labels


@lru_cache(maxsize=4)
def _load_fmnist_cached(images_path: str, labels_path: str, stamp: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    ipath, lpath = Path(images_path), Path(labels_path)
    images = _parse_idx_images(_read_gzip(ipath), ipath)
    labels = _parse_idx_labels(_read_gzip(lpath), lpath)
    if len(images) != len(labels):
        raise _corrupt(ipath, f"{len(images)} images but {len(labels)} labels in {lpath.name}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _file_stamp(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return (None,)
    return (st.st_mtime_ns, st.st_size)


def load_fmnist(split: str = "train", root: Union[str, Path, None] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a Fashion-MNIST split ('train': 60k, 'test'/'t10k': 10k) from the Debian IDX files.

    Returns ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``. Results are cached per
    file (keyed on path, mtime and size); do not modify the returned tensors in place.
    Raises ``DataUnavailable`` when a file is missing or corrupt.
    """
    root_path = Path(root) if root is not None else fmnist_root()
    ipath, lpath = _fmnist_paths(root_path, split)
    for path in (ipath, lpath):
        if not path.is_file():
            raise DataUnavailable(f"Fashion-MNIST file not found: {path}; {_install_hint()}")
    stamp = (_file_stamp(ipath), _file_stamp(lpath))
    return _load_fmnist_cached(str(ipath), str(lpath), stamp)


# --------------------------------------------------------------------------------------------------
# Configuration and timm recipe
# --------------------------------------------------------------------------------------------------


def _is_fmnist(data: str) -> bool:
    return str(data).lower() in _FMNIST_ALIASES


@dataclass
class DataConfig:
    """What data to read and how to augment it.

    ``data`` is ``"fmnist"`` or the path of an ImageNet-style folder. ``num_classes`` may be None for
    folders (taken from the folder). ``hflip`` is a probability. ``pad`` is the zero padding of the
    Fashion-MNIST random shift. ``auto_augment``, ``re_*``, ``color_jitter``, ``interpolation`` and
    ``crop_pct`` only affect folder data (timm transforms); mixup settings and ``smoothing`` affect both.
    """

    data: str = "fmnist"
    img_size: int = 28
    in_chans: int = 1
    num_classes: int | None = 10
    mean: tuple[float, ...] = FMNIST_MEAN
    std: tuple[float, ...] = FMNIST_STD
    auto_augment: str | None = None
    re_prob: float = 0.0
    re_mode: str = "pixel"
    re_count: int = 1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    hflip: float = 0.5
    pad: int = 2
    color_jitter: float = 0.4

    def __post_init__(self) -> None:
        self.data = str(self.data)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, self.in_chans):
            raise ValueError(f"mean/std need 1 or in_chans={self.in_chans} values, got {self.mean} / {self.std}")
        for name in ("re_prob", "mixup_prob", "switch_prob", "smoothing", "hflip"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.img_size <= 0 or self.pad < 0 or not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"bad img_size/pad/crop_pct: {self.img_size}/{self.pad}/{self.crop_pct}")

    @property
    def is_fmnist(self) -> bool:
        """True when ``data`` names Fashion-MNIST rather than a folder."""
        return _is_fmnist(self.data)

    @property
    def mixup_active(self) -> bool:
        """True when mixup or cutmix will be applied to training batches."""
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    @classmethod
    def fmnist(cls, **overrides: Any) -> "DataConfig":
        """Light Fashion-MNIST recipe: 28x28x1, shift within 2-pixel zero padding, flip, smoothing 0.1."""
        return cls(**{"data": "fmnist", **overrides})

    @classmethod
    def autoformer(cls, data: str, **overrides: Any) -> "DataConfig":
        """AutoFormer's ImageNet recipe (RandAugment, random erasing, mixup/cutmix, bicubic, crop 0.875)."""
        recipe: dict[str, Any] = dict(
            data=data, img_size=224, in_chans=3, num_classes=None,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, auto_augment=AUTOFORMER_RAND_AUGMENT,
            re_prob=0.25, re_mode="pixel", re_count=1, mixup=0.8, cutmix=1.0, mixup_prob=1.0,
            switch_prob=0.5, smoothing=0.1, interpolation="bicubic", crop_pct=0.875, hflip=0.5,
            color_jitter=0.4,
        )
        return cls(**{**recipe, **overrides})

    @classmethod
    def for_data(cls, data: str, **overrides: Any) -> "DataConfig":
        """The preset that fits ``data``: Fashion-MNIST's for "fmnist", AutoFormer's for a folder."""
        if _is_fmnist(data):
            return cls.fmnist(**{"data": data, **overrides})
        return cls.autoformer(data, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON/YAML friendly); ``DataConfig(**d)`` restores it."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


def make_transforms(cfg: DataConfig) -> tuple[Callable, Callable]:
    """timm ``(train_transform, eval_transform)`` for folder data (PIL image -> normalised tensor)."""
    from timm.data import create_transform

    train_tf = create_transform(
        cfg.img_size, is_training=True, auto_augment=cfg.auto_augment, interpolation=cfg.interpolation,
        re_prob=cfg.re_prob, re_mode=cfg.re_mode, re_count=cfg.re_count, hflip=cfg.hflip,
        color_jitter=cfg.color_jitter, mean=cfg.mean, std=cfg.std,
    )
    eval_tf = create_transform(
        cfg.img_size, is_training=False, interpolation=cfg.interpolation, crop_pct=cfg.crop_pct,
        mean=cfg.mean, std=cfg.std,
    )
    return train_tf, eval_tf


def make_mixup(cfg: DataConfig, num_classes: int | None = None) -> "Mixup | None":
    """timm ``Mixup`` for the recipe (batch mode, label smoothing folded in), or None when off."""
    if not cfg.mixup_active:
        return None
    from timm.data import Mixup

    n = num_classes if num_classes is not None else cfg.num_classes
    if n is None:
        raise ValueError("make_mixup needs num_classes (cfg.num_classes is None; pass bundle.num_classes)")
    return Mixup(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob, switch_prob=cfg.switch_prob,
        mode="batch", label_smoothing=cfg.smoothing, num_classes=n,
    )


def make_train_loss(cfg: DataConfig) -> nn.Module:
    """Training criterion: SoftTargetCrossEntropy with mixup, else label smoothing CE, else plain CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.mixup_active:
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


# --------------------------------------------------------------------------------------------------
# Sources and the held-out split
# --------------------------------------------------------------------------------------------------


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


def effective_val_size(num_total: int, val_size: int) -> int:
    """Requested validation size capped at 20% of the training set."""
    if val_size < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size}")
    return min(int(val_size), int(num_total * 0.2))


def _seeded_perm(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return torch.randperm(n, generator=gen)


def make_split(num_total: int, val_size: int = 10000, seed: int = 0, train_subset: int | None = None,
               data: str = "") -> dict[str, Any]:
    """Carve a held-out validation set from ``num_total`` training images.

    A seeded ``torch.randperm`` puts the first ``effective_val_size`` indices in validation; the rest,
    in permutation order, are the training indices, of which only the first ``train_subset`` are used.
    Returns a JSON-able dict: version, data, seed, num_total, val_indices, train_count.
    """
    if num_total <= 0:
        raise ValueError("cannot split an empty training set")
    n_val = effective_val_size(num_total, val_size)
    perm = _seeded_perm(num_total, seed)
    n_train = num_total - n_val
    if train_subset is not None:
        if train_subset <= 0:
            raise ValueError(f"train_subset must be positive, got {train_subset}")
        n_train = min(n_train, int(train_subset))
    return {
        "version": _SPLIT_VERSION, "data": str(data), "seed": int(seed), "num_total": int(num_total),
        "val_indices": perm[:n_val].tolist(), "train_count": int(n_train),
    }


def _check_split(split: dict[str, Any]) -> None:
    missing = {"seed", "num_total", "val_indices", "train_count"} - set(split)
    if missing:
        raise ValueError(f"split record lacks {sorted(missing)}")
    n = int(split["num_total"])
    val = split["val_indices"]
    if val and (min(val) < 0 or max(val) >= n or len(set(val)) != len(val)):
        raise ValueError(f"split val_indices must be distinct and within 0..{n - 1}")
    if not 0 <= int(split["train_count"]) <= n - len(val):
        raise ValueError(f"split train_count {split['train_count']} exceeds the {n - len(val)} non-val images")


def split_indices(split: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_indices, val_indices)`` of a split record, reproduced exactly from its seed."""
    _check_split(split)
    n = int(split["num_total"])
    val = torch.tensor(split["val_indices"], dtype=torch.int64)
    perm = _seeded_perm(n, int(split["seed"]))
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    train = perm[~is_val[perm]][: int(split["train_count"])]
    return train, val


def save_split(path: Union[str, Path], split: dict[str, Any]) -> None:
    """Write a split record as JSON atomically (temp file in the same directory, then os.replace)."""
    _check_split(split)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(split, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_split(path: Union[str, Path]) -> dict[str, Any]:
    """Read a split record written by :func:`save_split` (validated)."""
    with open(path, encoding="utf-8") as fh:
        split = json.load(fh)
    if not isinstance(split, dict):
        raise ValueError(f"{path}: not a split record")
    _check_split(split)
    return split


def _resolve_split(num_total: int, data: str, val_size: int, seed: int, train_subset: int | None,
                   split: dict[str, Any] | None) -> dict[str, Any]:
    if split is None:
        return make_split(num_total, val_size, seed, train_subset, data=data)
    if int(split["num_total"]) != num_total:
        raise ValueError(
            f"saved split was made for {split['num_total']} training images but {data} has {num_total}"
        )
    split = dict(split)
    if train_subset is not None:
        split["train_count"] = min(int(split["train_count"]), int(train_subset))
    return split


def _subset_val(val_idx: torch.Tensor, val_subset: int | None) -> torch.Tensor:
    if val_subset is None:
        return val_idx
    if val_subset <= 0:
        raise ValueError(f"val_subset must be positive, got {val_subset}")
    return val_idx[:val_subset]


def _tensor_source(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> TensorSource:
    return TensorSource(images=images[idx].unsqueeze(1), labels=labels[idx], indices=idx)


def _build_fmnist(cfg: DataConfig, val_size: int, seed: int, train_subset: int | None,
                  val_subset: int | None, split: dict[str, Any] | None) -> DataBundle:
    train_x, train_y = load_fmnist("train")
    test_x, test_y = load_fmnist("test")
    rec = _resolve_split(len(train_y), "fmnist", val_size, seed, train_subset, split)
    train_idx, val_idx = split_indices(rec)
    val_idx = _subset_val(val_idx, val_subset)
    return DataBundle(
        train=_tensor_source(train_x, train_y, train_idx),
        val=_tensor_source(train_x, train_y, val_idx),
        test=_tensor_source(test_x, test_y, torch.arange(len(test_y))),
        split=rec, num_classes=len(FMNIST_CLASSES), classes=list(FMNIST_CLASSES), kind="fmnist",
    )


def _image_folder(root: Path):
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DataUnavailable(f"image folder not found: {root}; expected layout {_FOLDER_LAYOUT}")
    try:
        return ImageFolder(str(root))
    except FileNotFoundError as exc:
        raise DataUnavailable(f"no usable images under {root} ({exc}); expected layout {_FOLDER_LAYOUT}") from exc


def _check_same_classes(train_classes: list[str], val_classes: list[str], root: Path) -> None:
    if train_classes == val_classes:
        return
    only_train = sorted(set(train_classes) - set(val_classes))[:5]
    only_val = sorted(set(val_classes) - set(train_classes))[:5]
    raise DataUnavailable(
        f"{root}: train/ and val/ have different classes (only in train: {only_train}, "
        f"only in val: {only_val}); both need the same <class> folders"
    )


def _folder_source(samples: Sequence[tuple[str, int]], idx: torch.Tensor) -> FolderSource:
    return FolderSource(samples=[tuple(samples[i]) for i in idx.tolist()], indices=idx)


def _build_folder(cfg: DataConfig, val_size: int, seed: int, train_subset: int | None,
                  val_subset: int | None, split: dict[str, Any] | None) -> DataBundle:
    root = Path(cfg.data)
    if not (root / "train").is_dir():
        raise DataUnavailable(f"{root / 'train'} not found; --data expects {_FOLDER_LAYOUT}")
    train_ds, test_ds = _image_folder(root / "train"), _image_folder(root / "val")
    _check_same_classes(train_ds.classes, test_ds.classes, root)
    n_cls = len(train_ds.classes)
    if cfg.num_classes is not None and cfg.num_classes != n_cls:
        raise ValueError(f"cfg.num_classes={cfg.num_classes} but {root} has {n_cls} classes")
    rec = _resolve_split(len(train_ds.samples), str(root), val_size, seed, train_subset, split)
    train_idx, val_idx = split_indices(rec)
    val_idx = _subset_val(val_idx, val_subset)
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


# --------------------------------------------------------------------------------------------------
# Sharded, resumable order
# --------------------------------------------------------------------------------------------------


def shard_indices(length: int, epoch: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                  start: int = 0, shuffle: bool = True, pad: bool = True) -> torch.Tensor:
    """This rank's indices for one epoch, from sample ``start`` of its shard on.

    With ``shuffle`` every rank draws the same permutation from ``seed + epoch``; with ``pad`` it is
    extended (wrapping around) to a multiple of ``world_size`` so all ranks get equal lengths. Rank
    ``r`` takes positions ``r, r + world_size, ...``. To resume after ``k`` batches use
    ``start = k * batch_size``.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    order = _seeded_perm(length, seed + epoch) if shuffle else torch.arange(length)
    if pad:
        total = math.ceil(length / world_size) * world_size
        if total > length:
            order = order.repeat(math.ceil(total / length))[:total]
    return order[rank::world_size][start:]


class ShardedOrder(Sampler[int]):
    """Stateful per-rank order (a Sampler): :func:`shard_indices` for the current epoch and position.

    ``position`` counts samples of this rank's shard already consumed; the owning loader advances it
    with :meth:`advance`. Iterating snapshots the remaining indices of the current epoch.
    """

    def __init__(self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, pad: bool = True) -> None:
        shard_indices(length, 0, seed, rank, world_size, shuffle=False, pad=pad)  # validates arguments
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.shuffle, self.pad = shuffle, pad
        self.epoch = 0
        self.position = 0

    @property
    def num_samples(self) -> int:
        """Samples in this rank's shard per epoch."""
        if self.pad:
            return math.ceil(self.length / self.world_size)
        return len(range(self.rank, self.length, self.world_size))

    def indices(self) -> torch.Tensor:
        """Remaining indices of the current epoch for this rank."""
        return shard_indices(self.length, self.epoch, self.seed, self.rank, self.world_size,
                             start=self.position, shuffle=self.shuffle, pad=self.pad)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples - self.position

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` (position 0); a no-op when already there, which keeps a resumed position."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def advance(self, n: int) -> None:
        """Mark ``n`` more samples of the current epoch as consumed."""
        self.position = min(self.position + int(n), self.num_samples)

    def next_epoch(self) -> None:
        """Move to the start of the following epoch."""
        self.epoch, self.position = self.epoch + 1, 0

    def rewind(self) -> None:
        """Back to the start of the current epoch."""
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "length", "world_size", "seed"}``."""
        return {"epoch": self.epoch, "position": self.position, "length": self.length,
                "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore epoch and position; length and world size must match the saved ones."""
        for key in ("length", "world_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"cannot resume: saved {key}={state[key]} but now {getattr(self, key)}")
        self.epoch = int(state["epoch"])
        self.position = min(int(state["position"]), self.num_samples)


# --------------------------------------------------------------------------------------------------
# Batch augmentation for in-memory images
# --------------------------------------------------------------------------------------------------


def augment_batch(images: torch.Tensor, generator: torch.Generator, pad: int = 2,
                  hflip: float = 0.5) -> torch.Tensor:
    """Random shift within a ``pad``-pixel zero padding and random horizontal flip of a whole batch.

    Equivalent to torchvision's ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip(hflip)`` per
    image, done with tensor indexing. ``images``: (B, C, H, W), any dtype; output has the same shape/dtype.
    """
    b, c, h, w = images.shape
    out = images
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if hflip > 0:
        flip = torch.rand(b, generator=generator) < hflip
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


def normalize_batch(images: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 normalised with cfg.mean/std, resized to cfg.img_size and
    repeated to cfg.in_chans channels when those differ from the stored images."""
    x = images.to(torch.float32).div_(255.0)
    if x.shape[1] != cfg.in_chans:
        if x.shape[1] != 1:
            raise ValueError(f"cannot map {x.shape[1]} stored channels to in_chans={cfg.in_chans}")
        x = x.expand(-1, cfg.in_chans, -1, -1)
    if x.shape[-2:] != (cfg.img_size, cfg.img_size):
        x = F.interpolate(x, size=(cfg.img_size, cfg.img_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


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
