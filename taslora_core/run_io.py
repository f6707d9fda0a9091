"""Open what a run folder holds: a MoLE checkpoint (experts + router on a named supernet) or a plain supernet.

The contract every command relies on:

- a supernet run folder holds `supernet.safetensors` + `space.json`; `space.json` may record `data` (a
  `DataConfig.to_dict()`) and `split` (file name of the held-out split, normally `split.json`);
- a MoLE run folder holds `mole.safetensors` + `mole.json`; `mole.json` records `supernet_dir` (absolute, or
  relative to the MoLE folder), `supernet_sha256`, `data`, `split`, and the training settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taslora_core.checkpoint import (
    SPACE_JSON, SUPERNET_WEIGHTS, CheckpointError, file_sha256, load_supernet, read_supernet_meta,
)
from taslora_core.integrity import check_sha256
from taslora_core.mole import MoLEModel
from taslora_core.mole_io import MOLE_CONFIG, MOLE_WEIGHTS, load_mole, read_mole_config
from taslora_core.supernet import Supernet
from taslora_core.workspace import latest


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready to evaluate: the supernet, its MoLE wrapper if any, and what the run recorded."""

    kind: str  # "mole" or "supernet"
    path: Path
    supernet: Supernet
    mole: MoLEModel | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def split_path(self) -> Path | None:
        """The held-out split saved with the run, if any."""
        name = self.meta.get("split")
        if not name:
            return None
        path = Path(name) if Path(name).is_absolute() else self.path / name
        return path if path.exists() else None

    @property
    def data(self) -> dict[str, Any] | None:
        """The DataConfig dict the run was trained with, if recorded."""
        return self.meta.get("data")


def is_mole_dir(path: Path) -> bool:
    """True for a folder holding a MoLE checkpoint."""
    return (path / MOLE_CONFIG).exists() and (path / MOLE_WEIGHTS).exists()


def is_supernet_dir(path: Path) -> bool:
    """True for a folder holding one of our supernet checkpoints."""
    return (path / SUPERNET_WEIGHTS).exists() and (path / SPACE_JSON).exists()


def supernet_dir_of(mole_dir: Path, meta: dict[str, Any], record: str = MOLE_CONFIG) -> Path:
    """The supernet folder a MoLE checkpoint (or a training run being resumed: `record` train_config.json)
    was trained on.

    A relative record is resolved from the MoLE folder (a workspace moved as a whole keeps loading). An absolute
    record that no longer exists falls back to the workspace layout `<mole_dir>/../../supernets/<same name>`
    (a workspace moved elsewhere) when that folder holds a supernet with the recorded sha256."""
    ref = meta.get("supernet_dir")
    if not ref or not isinstance(ref, str):
        raise CheckpointError(f"{Path(mole_dir) / record} does not name its supernet (supernet_dir)")
    path = Path(ref)
    if not path.is_absolute():
        return (Path(mole_dir) / path).resolve()
    if is_supernet_dir(path):
        return path
    moved = Path(mole_dir).resolve().parent.parent / "supernets" / path.name
    want = meta.get("supernet_sha256")
    if want and is_supernet_dir(moved) and file_sha256(moved / SUPERNET_WEIGHTS) == want:
        return moved
    return path


def load_checkpoint(path: str | Path, device: str = "cpu", verify_hash: bool = True) -> LoadedCheckpoint:
    """Open a MoLE run folder or a supernet run folder (or the weights file inside either)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run folder from the workspace")
    if is_mole_dir(path):
        meta = read_mole_config(path)
        sdir = supernet_dir_of(path, meta)
        if not is_supernet_dir(sdir):
            raise CheckpointError(f"MoLE checkpoint {path} needs supernet {sdir}, which is missing; restore it or retrain")
        if verify_hash:
            check_sha256(sdir / SUPERNET_WEIGHTS, meta.get("supernet_sha256"), path / MOLE_CONFIG,
                         f"the experts of {path} were trained on another supernet: restore that supernet or retrain the experts")
        supernet = load_supernet(sdir, device)
        mole = load_mole(path, supernet).to(device)
        return LoadedCheckpoint("mole", path, supernet, mole, meta)
    if is_supernet_dir(path):
        meta = read_supernet_meta(path)
        return LoadedCheckpoint("supernet", path, load_supernet(path, device), None, meta)
    raise CheckpointError(
        f"{path} holds neither a MoLE checkpoint ({MOLE_CONFIG}) nor a supernet ({SUPERNET_WEIGHTS}); "
        "pass a run folder written by taslora"
    )


def resolve_mole(workdir: str | Path, ckpt: str | Path | None) -> Path:
    """`ckpt` if given, else the latest finished MoLE run of the workspace."""
    if ckpt is not None:
        return Path(ckpt)
    return latest(workdir, "mole", "train experts first with `taslora train` (or pass --ckpt)")


def resolve_supernet(workdir: str | Path, ckpt: str | Path | None) -> Path:
    """`ckpt` if given, else the latest finished supernet run of the workspace."""
    if ckpt is not None:
        return Path(ckpt)
    return latest(
        workdir, "supernets",
        "train one with `taslora supernet train` or import one with `taslora supernet import` (or pass --supernet)",
    )
