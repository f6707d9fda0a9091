"""Finding and opening a killed training run to continue it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from taslora_core.artifact_read import ArtifactError, read_json_artifact
from taslora_core.checkpoint import CheckpointError
from taslora_core.train.config import RUNTIME_FIELDS, TrainConfig
from taslora_core.train.loop import TRAIN_STATE, load_train_state
from taslora_core.train.run_files import TRAIN_CONFIG, read_run_config, run_kind_dir
from taslora_core.workspace import WorkspaceError, is_finished, runs


def find_resumable(workdir: str | Path, kind: str) -> Path:
    """Newest unfinished run of `kind` (supernet, mole, single-lora or finetune) that has a training state."""
    kdir = run_kind_dir(kind)
    found = []
    for run in runs(workdir, kdir, finished_only=False):
        if is_finished(kdir, run.path) or not (run.path / TRAIN_STATE).exists():
            continue
        try:
            doc = read_json_artifact(run.path / TRAIN_CONFIG, "training record", "")
        except ArtifactError:  # not a candidate; naming it explicitly with --resume PATH reports the damage
            continue
        if doc.get("kind") == kind:
            found.append(run.path)
    if not found:
        raise WorkspaceError(f"no unfinished {kind} run with a checkpoint in workspace {workdir}; nothing to resume")
    return found[-1]


def open_resume(
    resume: str, workdir: str, latest_kind: str, kinds: tuple[str, ...]
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The run to resume ('latest': newest unfinished run of `latest_kind`), its train_config and its state."""
    run_dir = find_resumable(workdir, latest_kind) if resume == "latest" else Path(resume)
    if not (run_dir / TRAIN_STATE).exists() or not (run_dir / TRAIN_CONFIG).exists():
        raise CheckpointError(f"{run_dir} holds no resumable training state ({TRAIN_STATE}); pass a run folder or 'latest'")
    doc = read_run_config(run_dir)
    kind = doc.get("kind")
    if kind not in kinds:
        command = "taslora supernet train" if kind == "supernet" else "taslora train"
        raise ValueError(f"{run_dir} is a {kind} run; resume it with `{command} --resume {run_dir}`")
    if is_finished(run_kind_dir(kind), run_dir):
        raise ValueError(f"{run_dir} already finished; nothing to resume")
    return run_dir, doc, load_train_state(run_dir / TRAIN_STATE)


def with_runtime(saved: TrainConfig, now: TrainConfig) -> TrainConfig:
    """The resumed run's saved config with this invocation's runtime options (`RUNTIME_FIELDS`)."""
    return dataclasses.replace(saved, **{k: getattr(now, k) for k in RUNTIME_FIELDS if hasattr(now, k)})
