"""Checkpoint I/O: atomic writes, our safetensors supernet format, AutoFormer's official format.

Nothing is unpickled without `weights_only=True`; AutoFormer's `args` (an argparse.Namespace) is the only
extra class allowed, and only while reading an AutoFormer checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from taslora_core.atomic import (  # noqa: F401  (re-exported: the writers' historical home)
    atomic_save_safetensors,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
)
from taslora_core.space import SearchSpace


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the model."""


def load_torch(path: str | Path) -> Any:
    """torch.load with weights_only=True and a clear error."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is reported the same way
        raise CheckpointError(f"cannot read {path} as a weights-only torch checkpoint: {str(err).splitlines()[0]}") from None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (identifies the source checkpoint of an export)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------- key checks
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


# ---------------------------------------------------------------------- AutoFormer format
def load_autoformer_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The supernet state dict of an official AutoFormer checkpoint ({'model': state, 'args': Namespace, ...})."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"AutoFormer checkpoint {path} does not exist; check the path")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(
            f"cannot read {path} with weights_only loading ({str(err).splitlines()[0]}); "
            "it must be an AutoFormer .pth holding tensors under 'model'"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} has no 'model' entry (found {keys}); expected AutoFormer's checkpoint layout")
    state = ckpt["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'model' is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# ---------------------------------------------------------------------- our format
SUPERNET_WEIGHTS = "supernet.safetensors"
SPACE_JSON = "space.json"


def save_supernet(directory: str | Path, model: torch.nn.Module, extra: dict[str, Any] | None = None) -> Path:
    """Write `supernet.safetensors` + `space.json` (plus `extra` fields) into `directory`."""
    directory = Path(directory)
    space: SearchSpace = model.space  # type: ignore[assignment]
    atomic_save_safetensors(directory / SUPERNET_WEIGHTS, model.state_dict(), metadata={"format": "taslora-supernet"})
    atomic_write_json(directory / SPACE_JSON, {"space": space.to_dict(), **(extra or {})})
    return directory


def load_supernet(directory: str | Path, device: str | torch.device = "cpu"):
    """Load a supernet saved by `save_supernet` (a directory, or the path of its safetensors file)."""
    from taslora_core.supernet import Supernet

    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    weights, meta = directory / SUPERNET_WEIGHTS, directory / SPACE_JSON
    if not weights.exists() or not meta.exists():
        raise CheckpointError(
            f"{directory} is not a taslora supernet (needs {SUPERNET_WEIGHTS} and {SPACE_JSON}); "
            "train one with `taslora supernet train` or import one with `taslora supernet import`"
        )
    space = SearchSpace.from_dict(json.loads(meta.read_text())["space"])
    model = Supernet(space)
    model.load_state_dict_strict(load_file(str(weights)), source=str(weights))
    return model.to(device)
