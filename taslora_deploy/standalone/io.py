"""Save and load a standalone ViT: `model.safetensors` + `config.json` (space, subnet, input shape, how to feed it
(`pretrained_cfg`, see taslora_deploy.preprocessing), extras)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from taslora_core.artifact_read import load_safetensors_checked, read_json_artifact
from taslora_core.atomic import atomic_save_safetensors, atomic_write_json
from taslora_core.space import SearchSpace
from taslora_core.state_check import CheckpointError, load_state_strict
from taslora_core.subnet import Subnet
from taslora_deploy.artifacts import MODEL_CONFIG, MODEL_WEIGHTS
from taslora_deploy.preprocessing import CONFIG_KEY, Preprocessing
from taslora_deploy.standalone.model import StandaloneViT

__all__ = ["MODEL_CONFIG", "MODEL_WEIGHTS", "load_standalone", "save_standalone"]

STANDALONE_FORMAT = "taslora-standalone"


def save_standalone(directory: str | Path, model: StandaloneViT, extra: dict[str, Any] | None = None,
                    preprocessing: Preprocessing | None = None) -> Path:
    """Write `model.safetensors` + `config.json` (space, subnet, `preprocessing` under "pretrained_cfg" when given,
    and `extra` such as routing weights). Folders saved without `preprocessing` still load."""
    directory = Path(directory)
    atomic_save_safetensors(directory / MODEL_WEIGHTS, model.state_dict(), metadata={"format": STANDALONE_FORMAT})
    config = {
        "format": STANDALONE_FORMAT,
        "space": model.space.to_dict(),
        "subnet": model.subnet.to_dict(),
        "input_shape": list(model.input_shape),
        **({CONFIG_KEY: preprocessing.to_dict()} if preprocessing is not None else {}),
        **(extra or {}),
    }
    atomic_write_json(directory / MODEL_CONFIG, config)
    return directory


def load_standalone(directory: str | Path, device: str | torch.device = "cpu") -> StandaloneViT:
    """Load a model written by `save_standalone` (or `taslora export`) in one call."""
    directory = Path(directory)
    weights, config_path = directory / MODEL_WEIGHTS, directory / MODEL_CONFIG
    if not weights.exists() or not config_path.exists():
        raise CheckpointError(
            f"{directory} holds no standalone model (needs {MODEL_WEIGHTS} and {MODEL_CONFIG}); run `taslora export`"
        )
    fix = "re-export it with `taslora export` or restore the shipped folder"
    config = read_json_artifact(config_path, "model config", fix)
    if not isinstance(config.get("space"), dict) or not isinstance(config.get("subnet"), dict):
        raise CheckpointError(f"model config {config_path} lacks 'space' or 'subnet'; {fix}")
    model = StandaloneViT(SearchSpace.from_dict(config["space"]), Subnet.from_dict(config["subnet"]))
    load_state_strict(model, load_safetensors_checked(weights, "model weights", fix), str(weights))
    return model.to(device).eval()
