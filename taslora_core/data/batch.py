"""Whole-batch operations on in-memory uint8 images (Fashion-MNIST): random shift and flip, normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from taslora_core.data.config import DataConfig

__all__ = ["augment_batch", "normalize_batch"]

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
