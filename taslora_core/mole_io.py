"""MoLE checkpoint files: `mole.safetensors` (experts + router tensors) and `mole.json` (config, space, extras).

The model (`taslora_core.mole`) does no file I/O; this module writes and reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from taslora_core.atomic import atomic_save_safetensors, atomic_write_json
from taslora_core.state_check import CheckpointError, check_state_keys
from taslora_core.mole import MoLEConfig, MoLEModel
from taslora_core.supernet import Supernet

MOLE_WEIGHTS = "mole.safetensors"
MOLE_CONFIG = "mole.json"


def save_mole(directory: str | Path, model: MoLEModel, extra: dict[str, Any] | None = None) -> Path:
    """Write `mole.safetensors` (experts + router) and `mole.json` (config, space, `extra`)."""
    directory = Path(directory)
    atomic_save_safetensors(directory / MOLE_WEIGHTS, model.trainable_state(), metadata={"format": "taslora-mole"})
    atomic_write_json(
        directory / MOLE_CONFIG,
        {"format": "taslora-mole", "config": model.config.to_dict(), "space": model.space.to_dict(), **(extra or {})},
    )
    return directory


def read_mole_config(directory: str | Path) -> dict[str, Any]:
    """The JSON written next to a MoLE checkpoint."""
    path = Path(directory) / MOLE_CONFIG
    if not path.exists():
        raise CheckpointError(f"{directory} holds no MoLE checkpoint ({MOLE_CONFIG} missing); run `taslora train`")
    return json.loads(path.read_text())


def load_mole(directory: str | Path, supernet: Supernet) -> MoLEModel:
    """Load experts + router saved by `save_mole` onto `supernet`."""
    directory = Path(directory)
    meta = read_mole_config(directory)
    model = MoLEModel(supernet, MoLEConfig.from_dict(meta["config"]))
    state = load_file(str(directory / MOLE_WEIGHTS))
    expected = model.trainable_state()
    check_state_keys(expected, state, str(directory / MOLE_WEIGHTS))
    model.load_state_dict({**{f"supernet.{k}": v for k, v in supernet.state_dict().items()}, **state}, strict=True)
    return model
