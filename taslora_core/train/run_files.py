"""What a training run folder holds besides its weights: file names, the recorded config, the result type."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taslora_core.atomic import atomic_write_json
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


def relative_to_run(path: Path, start: Path, workdir: Path) -> str:
    """`path` relative to `start` when both live in `workdir`, else absolute (what mole.json records)."""
    path, start, workdir = path.resolve(), start.resolve(), workdir.resolve()
    try:
        path.relative_to(workdir)
        start.relative_to(workdir)
    except ValueError:
        return str(path)
    return os.path.relpath(path, start)
