"""Checkpoint I/O: our safetensors supernet format, AutoFormer's official format (atomic writers re-exported).

Nothing is unpickled without `weights_only=True`; AutoFormer's `args` (an argparse.Namespace) is the only
extra class allowed, and only while reading an AutoFormer checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from taslora_core.artifact_read import load_safetensors_checked, load_torch_checked, read_json_artifact
from taslora_core.atomic import atomic_save_safetensors, atomic_write_json
from taslora_core.integrity import RUN_FILES_RECORDED, SHA256_KEY, file_sha256, hashes_of  # file_sha256: also from here
from taslora_core.space import SearchSpace
from taslora_core.state_check import CheckpointError, load_state_strict  # CheckpointError: also imported from here
from taslora_core.supernet import Supernet

__all__ = ["CheckpointError", "load_state_strict", "atomic_save_safetensors", "atomic_write_json", "file_sha256",
           "load_torch", "load_autoformer_state", "load_autoformer_supernet", "SUPERNET_WEIGHTS", "SPACE_JSON",
           "save_supernet", "read_supernet_meta", "load_supernet"]


def load_torch(path: str | Path, what: str = "checkpoint", fix: str = "check the path or rerun the step that wrote it") -> Any:
    """torch.load with weights_only=True; a missing or damaged file is a one-line ArtifactError naming it."""
    return load_torch_checked(path, what, fix)


# ---------------------------------------------------------------------- AutoFormer format
def load_autoformer_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The supernet state dict of an official AutoFormer checkpoint ({'model': state, 'args': Namespace, ...})."""
    path = Path(path)
    ckpt = load_torch_checked(path, "AutoFormer checkpoint",
                              "it must be an AutoFormer .pth holding tensors under 'model'", [argparse.Namespace])
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
SUPERNET_FIX = "restore the run folder from its source or retrain (`taslora supernet train` / `supernet import`)"


def save_supernet(directory: str | Path, model: Supernet, extra: dict[str, Any] | None = None) -> Path:
    """Write `supernet.safetensors` + `space.json` (plus `extra` fields, and the sha256 of the weights and of
    split.json) into `directory`; space.json comes last, so a run is complete once it exists."""
    directory = Path(directory)
    atomic_save_safetensors(directory / SUPERNET_WEIGHTS, model.state_dict(), metadata={"format": "taslora-supernet"})
    hashes = hashes_of(directory, (SUPERNET_WEIGHTS, *RUN_FILES_RECORDED))
    atomic_write_json(directory / SPACE_JSON, {"space": model.space.to_dict(), **(extra or {}), SHA256_KEY: hashes})
    return directory


def read_supernet_meta(directory: str | Path) -> dict[str, Any]:
    """space.json of a supernet run folder (checked: a damaged file is a one-line ArtifactError)."""
    return read_json_artifact(Path(directory) / SPACE_JSON, "supernet record", SUPERNET_FIX)


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
    doc = read_supernet_meta(directory)
    if not isinstance(doc.get("space"), dict):
        raise CheckpointError(f"supernet record {meta} lacks its search space ('space'); {SUPERNET_FIX}")
    space = SearchSpace.from_dict(doc["space"])
    want = (doc.get(SHA256_KEY) or {}).get(SUPERNET_WEIGHTS) if isinstance(doc.get(SHA256_KEY), dict) else None
    state = load_safetensors_checked(weights, "supernet weights", SUPERNET_FIX, sha256=want, recorded_in=meta)
    model = Supernet(space)
    load_state_strict(model, state, source=str(weights))
    return model.to(device)
