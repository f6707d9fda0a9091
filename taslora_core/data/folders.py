"""ImageNet-style folders (``PATH/train/<class>/*``, ``PATH/val/<class>/*``) read with torchvision's ImageFolder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taslora_core.data.errors import FOLDER_LAYOUT, DataUnavailable

__all__ = ["read_image_folders"]

def _image_folder(root: Path) -> Any:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DataUnavailable(f"image folder not found: {root}; expected layout {FOLDER_LAYOUT}")
    try:
        return ImageFolder(str(root))
    except FileNotFoundError as exc:
        raise DataUnavailable(f"no usable images under {root} ({exc}); expected layout {FOLDER_LAYOUT}") from exc


def _check_same_classes(train_classes: list[str], val_classes: list[str], root: Path) -> None:
    if train_classes == val_classes:
        return
    only_train = sorted(set(train_classes) - set(val_classes))[:5]
    only_val = sorted(set(val_classes) - set(train_classes))[:5]
    raise DataUnavailable(
        f"{root}: train/ and val/ have different classes (only in train: {only_train}, "
        f"only in val: {only_val}); both need the same <class> folders"
    )


def read_image_folders(root: Path) -> tuple[Any, Any]:
    """``(ImageFolder of root/train, ImageFolder of root/val)``, checked to exist and to hold the same classes."""
    if not (root / "train").is_dir():
        raise DataUnavailable(f"{root / 'train'} not found; --data expects {FOLDER_LAYOUT}")
    train_ds, test_ds = _image_folder(root / "train"), _image_folder(root / "val")
    _check_same_classes(train_ds.classes, test_ds.classes, root)
    return train_ds, test_ds
