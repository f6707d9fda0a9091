"""What data to read and how to augment it (`DataConfig` and its presets), and the timm pieces the recipe
drives: per-image transforms for folder data, batch mixup/cutmix and the training loss."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from taslora_core.data.fmnist import FMNIST_MEAN, FMNIST_STD, is_fmnist_name

if TYPE_CHECKING:
    from timm.data import Mixup

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AUTOFORMER_RAND_AUGMENT", "DataConfig", "make_transforms",
           "make_mixup", "make_train_loss"]

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
AUTOFORMER_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"


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
        return is_fmnist_name(self.data)

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
        if is_fmnist_name(data):
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
