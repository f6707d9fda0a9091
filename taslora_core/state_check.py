"""Strict state-dict loading whose error names the missing, unexpected and mis-shaped keys.

No file I/O here (that is `taslora_core.checkpoint`), so models can load strictly without importing it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the model."""


def check_state_keys(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k} {tuple(got[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the supernet of this search space: {'; '.join(problems)}; "
            "pass the --space the checkpoint was trained with"
        )


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`model.load_state_dict(state, strict=True)` after `check_state_keys` (a readable error first)."""
    check_state_keys(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)
