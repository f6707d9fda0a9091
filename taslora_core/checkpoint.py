"""Checkpoint I/O: our safetensors supernet format, AutoFormer's official format (atomic writers re-exported).

Nothing is unpickled without `weights_only=True`; AutoFormer's `args` (an argparse.Namespace) is the only
extra class allowed, and only while reading an AutoFormer checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from taslora_core.atomic import atomic_save_safetensors, atomic_write_json
from taslora_core.space import SearchSpace
from taslora_core.state_check import CheckpointError, load_state_strict  # CheckpointError: also imported from here
from taslora_core.supernet import Supernet


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


def load_autoformer_supernet(path: str | Path, space: SearchSpace | str) -> Supernet:
    """A `Supernet` of `space` (a SearchSpace, preset name or YAML path) loaded strictly from an official
    AutoFormer checkpoint (weights-only loading). """
    space = SearchSpace.resolve(space) if isinstance(space, str) else space
    model = Supernet(space)
    load_state_strict(model, load_autoformer_state(path), source=str(path))
    return model


# ---------------------------------------------------------------------- our format
SUPERNET_WEIGHTS = "supernet.safetensors"
SPACE_JSON = "space.json"


def save_supernet(directory: str | Path, model: Supernet, extra: dict[str, Any] | None = None) -> Path:
    """Write `supernet.safetensors` + `space.json` (plus `extra` fields) into `directory`."""
    directory = Path(directory)
    atomic_save_safetensors(directory / SUPERNET_WEIGHTS, model.state_dict(), metadata={"format": "taslora-supernet"})
    atomic_write_json(directory / SPACE_JSON, {"space": model.space.to_dict(), **(extra or {})})
    return directory


def load_supernet(directory: str | Path, device: str | torch.device = "cpu") -> Supernet:
    """Load a supernet saved by `save_supernet` (a directory, or the path of its safetensors file)."""
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
    load_state_strict(model, load_file(str(weights)), source=str(weights))
    return model.to(device)
