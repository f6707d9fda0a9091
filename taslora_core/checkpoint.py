"""Checkpoint I/O: atomic writes, our safetensors supernet format, AutoFormer's official format.

Nothing is unpickled without `weights_only=True`; AutoFormer's `args` (an argparse.Namespace) is the only
extra class allowed, and only while reading an AutoFormer checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from taslora_core.space import SearchSpace


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the model."""


# ---------------------------------------------------------------------- atomic writes
def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call writer(tmp) for a temp file next to `path`, fsync it, then rename over `path` (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write an indented JSON file."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """Atomically torch.save an object made of tensors, numbers, strings, lists and dicts."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically write tensors (made contiguous, on CPU) to a safetensors file."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=metadata))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


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
