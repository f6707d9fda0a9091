"""Fashion-MNIST read from Debian's ``dataset-fashion-mnist`` package: the gzip IDX files, checked and cached.

The files live under :data:`FMNIST_ROOT`, or under ``$TASLORA_FMNIST_DIR`` when that is set.
"""

from __future__ import annotations

import gzip
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Union

import numpy as np
import torch

from taslora_core.data.errors import FOLDER_LAYOUT, DataUnavailable

__all__ = ["FMNIST_ROOT", "FMNIST_ENV", "FMNIST_CLASSES", "FMNIST_MEAN", "FMNIST_STD", "fmnist_root",
           "load_fmnist", "is_fmnist_name"]

FMNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FMNIST_ENV = "TASLORA_FMNIST_DIR"
FMNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FMNIST_MEAN: tuple[float, ...] = (0.2860,)
FMNIST_STD: tuple[float, ...] = (0.3530,)


_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_FMNIST_ALIASES = ("fmnist", "fashion-mnist", "fashion_mnist")


def _install_hint() -> str:
    return (
        f"fix: `apt-get install dataset-fashion-mnist` (or set {FMNIST_ENV}), "
        f"or pass --data PATH for an ImageNet-style folder ({FOLDER_LAYOUT})"
    )


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


def is_fmnist_name(data: str) -> bool:
    """True when ``data`` names Fashion-MNIST ("fmnist", "fashion-mnist" or "fashion_mnist", any case)."""
    return str(data).lower() in _FMNIST_ALIASES
