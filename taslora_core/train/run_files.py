"""What a training run folder holds besides its weights: file names, the recorded config, the result type."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taslora_core.artifact_read import read_json_artifact
from taslora_core.atomic import atomic_write_json
from taslora_core.state_check import CheckpointError
from taslora_core.train.config import TrainConfig
from taslora_core.workspace import SUMMARY_JSON

SPLIT_FILE = "split.json"
SUMMARY = SUMMARY_JSON
TRAIN_CONFIG = "train_config.json"


@dataclass
class RunResult:
    """A finished run: its folder and the numbers of its summary.json."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def run_kind_dir(kind: str) -> str:
    """The workspace folder of a run kind: `mole` for mole/single-lora runs, `supernets` for the others."""
    return "mole" if kind in ("mole", "single-lora") else "supernets"


def write_run_config(run_dir: Path, kind: str, cfg: TrainConfig, extra: dict[str, Any]) -> None:
    """Record the run's kind, config and `extra` (space, data, supernet) in train_config.json."""
    atomic_write_json(run_dir / TRAIN_CONFIG, {"kind": kind, "config": cfg.to_dict(), **extra})


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """train_config.json of a training run folder (checked: a damaged file is a one-line ArtifactError)."""
    doc = read_json_artifact(Path(run_dir) / TRAIN_CONFIG, "training record",
                             "restore it from a copy of the run folder, or start a new run")
    if not isinstance(doc.get("config", {}), dict):
        raise CheckpointError(f"training record {Path(run_dir) / TRAIN_CONFIG} lacks its settings ('config'); start a new run")
    return doc


def recorded_epochs(run_dir: Path, default: int | None = None) -> int:
    """Epochs a training run recorded in its train_config.json; `default` where the run recorded none
    (e.g. an imported AutoFormer supernet). Without a default a missing record is a CheckpointError."""
    path = Path(run_dir) / TRAIN_CONFIG
    if path.exists():
        doc = read_run_config(run_dir)
        epochs = (doc.get("config") or doc).get("epochs")
        if epochs is not None:
            return int(epochs)
    if default is None:
        raise CheckpointError(f"{run_dir} records no training epochs ({TRAIN_CONFIG} missing or without 'epochs')")
    return default


def relative_to_run(path: Path, start: Path, workdir: Path) -> str:
    """`path` relative to `start` when both live in `workdir`, else absolute (what mole.json records)."""
    path, start, workdir = path.resolve(), start.resolve(), workdir.resolve()
    try:
        path.relative_to(workdir)
        start.relative_to(workdir)
    except ValueError:
        return str(path)
    return os.path.relpath(path, start)
