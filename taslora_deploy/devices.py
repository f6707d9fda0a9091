"""Device strings of the deploy runtimes: 'cpu' or 'cuda[:N]'."""

from __future__ import annotations

import torch


def parse_device(device: str) -> tuple[str, int]:
    """('cpu', 0) or ('cuda', N) for 'cpu', 'cuda' or 'cuda:N'; ValueError otherwise."""
    dev = str(device).lower()
    if dev == "cpu":
        return "cpu", 0
    if dev == "cuda" or dev.startswith("cuda:"):
        idx = int(dev.split(":", 1)[1]) if ":" in dev else 0
        return "cuda", idx
    raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")


def module_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a module's first parameter (else first floating buffer; else CPU float32)."""
    for p in model.parameters():
        return p.device, p.dtype
    for b in model.buffers():
        if b.is_floating_point():
            return b.device, b.dtype
    return torch.device("cpu"), torch.float32
