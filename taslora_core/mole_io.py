"""MoLE checkpoint files: `mole.safetensors` (experts + router tensors) and `mole.json` (config, space, extras).

The model (`taslora_core.mole`) does no file I/O; this module writes and reads it. `config` holds the model's
structure (expert structure, router and routing variant), so every training recipe loads from it alone; `recipe`
(written by `taslora train`) names the recipe and its settings. A mole.json written before recipes existed has
neither a structure nor a recipe: it loads as the paper's mixture, and `mole_recipe` reports the `paper` recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taslora_core.artifact_read import load_safetensors_checked, read_json_artifact
from taslora_core.atomic import atomic_save_safetensors, atomic_write_json
from taslora_core.integrity import RUN_FILES_RECORDED, SHA256_KEY, hashes_of
from taslora_core.state_check import CheckpointError, check_state_keys
from taslora_core.mole import MoLEConfig, MoLEModel
from taslora_core.supernet import Supernet

MOLE_WEIGHTS = "mole.safetensors"
MOLE_CONFIG = "mole.json"
MOLE_FIX = "restore the run folder from its source or retrain the experts with `taslora train`"
RECIPE_KEY = "recipe"


def save_mole(directory: str | Path, model: MoLEModel, extra: dict[str, Any] | None = None) -> Path:
    """Write `mole.safetensors` (experts + router) and `mole.json` (config, space, `extra`, the sha256 of the
    weights and of split.json); mole.json comes last, so a run is complete once it exists."""
    directory = Path(directory)
    atomic_save_safetensors(directory / MOLE_WEIGHTS, model.trainable_state(), metadata={"format": "taslora-mole"})
    atomic_write_json(
        directory / MOLE_CONFIG,
        {"format": "taslora-mole", "config": model.config.to_dict(), "space": model.space.to_dict(), **(extra or {}),
         SHA256_KEY: hashes_of(directory, (MOLE_WEIGHTS, *RUN_FILES_RECORDED))},
    )
    return directory


def read_mole_config(directory: str | Path) -> dict[str, Any]:
    """The JSON written next to a MoLE checkpoint."""
    path = Path(directory) / MOLE_CONFIG
    if not path.exists():
        raise CheckpointError(f"{directory} holds no MoLE checkpoint ({MOLE_CONFIG} missing); run `taslora train`")
    doc = read_json_artifact(path, "MoLE record", MOLE_FIX)
    if not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"MoLE record {path} lacks its expert settings ('config'); {MOLE_FIX}")
    return doc


def mole_recipe(meta: dict[str, Any]) -> dict[str, Any]:
    """{"name", "settings"} of the recipe a MoLE record was trained with; `paper` and its structural settings for a
    record written before recipes existed (its optimisation settings are in its run's train_config.json)."""
    recorded = meta.get(RECIPE_KEY)
    if isinstance(recorded, dict) and isinstance(recorded.get("name"), str):
        return recorded
    # imported here: the training package imports this module
    from taslora_core.train.recipes import OPTIMISATION_SETTINGS, recipe_settings

    paper = recipe_settings("paper")
    return {"name": "paper", "settings": {k: v for k, v in paper.items() if k not in OPTIMISATION_SETTINGS}}


def load_mole(directory: str | Path, supernet: Supernet) -> MoLEModel:
    """Load experts + router saved by `save_mole` onto `supernet`."""
    directory = Path(directory)
    meta = read_mole_config(directory)
    model = MoLEModel(supernet, MoLEConfig.from_dict(meta["config"]))
    recorded = meta.get(SHA256_KEY) if isinstance(meta.get(SHA256_KEY), dict) else {}
    state = load_safetensors_checked(directory / MOLE_WEIGHTS, "MoLE weights", MOLE_FIX,
                                     sha256=recorded.get(MOLE_WEIGHTS), recorded_in=directory / MOLE_CONFIG)
    expected = model.trainable_state()
    check_state_keys(expected, state, str(directory / MOLE_WEIGHTS))
    model.load_state_dict({**{f"supernet.{k}": v for k, v in supernet.state_dict().items()}, **state}, strict=True)
    return model
