"""The files of a specialize run (`<workdir>/specialized/<run>/`), and how an export finds and reads one.

    train_config.json        kind "specialize", the settings, the subnet, the source checkpoint (path + sha256),
                             the data and the sha256 of split.json
    split.json               the held-out split the validation images come from (the source run's)
    subnet.json              the subnet (and the checkpoint, as best.json has it: `taslora export --subnet` takes it)
    log.txt                  plain progress lines
    metrics.jsonl            one record per evaluation (the validation curve)
    train_state.pt (+ .sha256.json)  the resumable state (atomic; `taslora_core.train.loop`)
    specialized.safetensors  per (block, layer) the FINAL weight delta of the subnet's sliced shape
                             ('blocks.<b>.<layer>': mixture + what was learned, or final - sliced supernet weight)
    summary.json             the key numbers (`taslora runs`)
    specialize.json          the record, written last (the run is finished once it exists): subnet, source run +
                             sha256, weights mode, steps run, best step, validation curve, val top-1/loss before and
                             after, CPU seconds, and the sha256 of every file above that the export trusts
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from taslora_core import workspace
from taslora_core.artifact_read import format_problem, load_safetensors_checked, read_json_artifact
from taslora_core.integrity import SHA256_KEY, check_sha256, file_sha256
from taslora_core.slicing import LINEAR_LAYERS, block_dims, in_features, out_features
from taslora_core.space import SearchSpace
from taslora_core.specialize.model import FixedDeltas, delta_name
from taslora_core.subnet import Subnet
from taslora_core.train.loop import TRAIN_STATE
from taslora_core.train.run_files import TRAIN_CONFIG

__all__ = ["DELTAS_FILE", "KIND", "LOG_TXT", "RECORD_FORMAT", "SPECIALIZE_JSON", "SPLIT_FILE", "SUBNET_JSON",
           "SpecializedRun", "find_resumable", "find_specialized", "pick_specialized", "read_specialized"]

KIND = "specialized"  # the workspace folder of specialize runs
SPECIALIZE_JSON = "specialize.json"
DELTAS_FILE = "specialized.safetensors"
SUBNET_JSON = "subnet.json"
SPLIT_FILE = "split.json"
LOG_TXT = "log.txt"
RECORD_FORMAT, RECORD_VERSION = "taslora-specialized", 1
RECORD_KEYS = ("subnet", "space", "source", "weights", "steps_run", "best_step", "val_before", "val_after")
HASHED_FILES = (DELTAS_FILE, SPLIT_FILE, TRAIN_CONFIG, SUBNET_JSON, workspace.SUMMARY_JSON)
FIX = "run `taslora specialize` again (or pass --no-specialize to export without it)"


@dataclass
class SpecializedRun:
    """A finished specialize run as an export reads it: its record and its final deltas, checked."""

    path: Path
    record: dict[str, Any]
    subnet: Subnet
    deltas: dict[tuple[int, str], torch.Tensor] = field(repr=False)

    @property
    def source_sha256(self) -> dict[str, str]:
        """sha256 of the checkpoint files the run started from."""
        return dict(self.record["source"].get("sha256") or {})

    def delta_source(self) -> FixedDeltas:
        """The deltas as `taslora_core.evaluate`'s delta source (`mole=`): the subnet as the export folds it."""
        return FixedDeltas(self.subnet, self.deltas)

    def describe(self) -> dict[str, Any]:
        """What an export records about it (report.json, config.json, the certificates)."""
        r = self.record
        before, after = r["val_before"], r["val_after"]
        return {"run": str(self.path), "sha256": file_sha256(self.path / SPECIALIZE_JSON),
                "weights": r["weights"], "source_kind": r["source"].get("kind"), "steps_run": r["steps_run"],
                "best_step": r["best_step"], "budget_steps": r.get("budget_steps"),
                "cpu_seconds": r.get("cpu_seconds"), "wall_seconds": r.get("wall_seconds"),
                "val_images": after.get("count"), "val_top1_before": before["top1"], "val_top1_after": after["top1"],
                "val_loss_before": before["loss"], "val_loss_after": after["loss"],
                "val_top1_gain_points": 100 * (after["top1"] - before["top1"])}


def _expected_shapes(space: SearchSpace, subnet: Subnet) -> dict[str, tuple[int, int]]:
    out = {}
    for b in range(subnet.depth):
        d = block_dims(space, subnet, b)
        for layer in LINEAR_LAYERS:
            out[delta_name(b, layer)] = (out_features(layer, d), in_features(layer, d))
    return out


def read_specialized(path: str | Path) -> SpecializedRun:
    """A finished specialize run folder, checked: specialize.json's format and keys, the sha256 it recorded for
    specialized.safetensors, and one delta of the subnet's sliced shape per (block, layer). One-line ArtifactError
    (or ValueError) otherwise."""
    run = Path(path)
    if run.is_file():
        run = run.parent
    if not (run / SPECIALIZE_JSON).is_file():
        raise ValueError(f"{run} is not a finished specialize run ({SPECIALIZE_JSON} missing); {FIX}")
    doc = read_json_artifact(run / SPECIALIZE_JSON, "specialize record", FIX)
    problem = format_problem(doc, "specialize record", RECORD_FORMAT, RECORD_VERSION, RECORD_KEYS)
    if problem:
        raise ValueError(f"specialize record {run / SPECIALIZE_JSON} {problem}; {FIX}")
    subnet = Subnet.from_dict(doc["subnet"])
    space = SearchSpace.from_dict(doc["space"])
    hashes = doc.get(SHA256_KEY) if isinstance(doc.get(SHA256_KEY), dict) else {}
    if not hashes.get(DELTAS_FILE):
        raise ValueError(f"{run / SPECIALIZE_JSON} records no sha256 of {DELTAS_FILE}; {FIX}")
    state = load_safetensors_checked(run / DELTAS_FILE, "specialized deltas", FIX, sha256=hashes[DELTAS_FILE],
                                     recorded_in=run / SPECIALIZE_JSON)
    want = _expected_shapes(space, subnet)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        wrong = sorted(set(got) ^ set(want)) or sorted(k for k in want if got[k] != want[k])
        raise ValueError(f"{run / DELTAS_FILE} does not hold one delta of the subnet's sliced shape per (block, layer) "
                         f"(first mismatch: {wrong[0]}); {FIX}")
    deltas = {(b, layer): state[delta_name(b, layer)].float() for b in range(subnet.depth) for layer in LINEAR_LAYERS}
    return SpecializedRun(run, doc, subnet, deltas)


def _quick_record(run: Path) -> dict[str, Any] | None:
    """specialize.json parsed without checks (for choosing among runs; the chosen one is read checked)."""
    try:
        doc = json.loads((run / SPECIALIZE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def find_specialized(workdir: str | Path, subnet: Subnet, source_sha256: dict[str, str]) -> Path | None:
    """The newest finished specialize run of `subnet` started from the checkpoint whose files have `source_sha256`
    (the same MoLE run, or the same supernet alone), or None."""
    for run in reversed(workspace.runs(workdir, KIND)):
        doc = _quick_record(run.path)
        if doc is None or not isinstance(doc.get("source"), dict) or not isinstance(doc.get("subnet"), dict):
            continue
        try:
            same_subnet = Subnet.from_dict(doc["subnet"]) == subnet
        except (ValueError, TypeError, KeyError):
            continue
        if same_subnet and doc["source"].get("sha256") == source_sha256:
            return run.path
    return None


def pick_specialized(workdir: str | Path, explicit: str | Path | None, subnet: Subnet,
                     source_sha256: dict[str, str], space: SearchSpace) -> SpecializedRun | None:
    """The specialize run an export folds: `explicit` (checked to be of this subnet, space and checkpoint), else the
    newest matching run of the workspace (`find_specialized`), else None."""
    path = Path(explicit) if explicit is not None else find_specialized(workdir, subnet, source_sha256)
    if path is None:
        return None
    run = read_specialized(path)
    if SearchSpace.from_dict(run.record["space"]) != space:
        raise ValueError(f"specialize run {run.path} was made in another search space than this checkpoint's "
                         f"'{space.name}'; pass a specialize run of this checkpoint or --no-specialize")
    if run.subnet != subnet:
        raise ValueError(f"specialize run {run.path} specialised subnet {run.subnet.to_dict()}, not the exported "
                         f"{subnet.to_dict()}; pass the matching --subnet, another --specialized run or --no-specialize")
    if run.source_sha256 != source_sha256:
        raise ValueError(f"specialize run {run.path} started from another checkpoint ({run.record['source'].get('path')}, "
                         "other sha256) than the one exported; pass its --ckpt, another --specialized run or "
                         "--no-specialize")
    return run


def find_resumable(workdir: str | Path) -> Path:
    """The newest unfinished specialize run of the workspace that has a training state (`--resume latest`)."""
    found = [r.path for r in workspace.runs(workdir, KIND, finished_only=False)
             if not workspace.is_finished(KIND, r.path) and (r.path / TRAIN_STATE).exists()]
    if not found:
        raise workspace.WorkspaceError(f"no unfinished specialize run with a checkpoint in workspace {workdir}; "
                                       "nothing to resume")
    return found[-1]


def check_recorded(path: Path, doc: dict[str, Any], key: str, recorded_in: Path) -> None:
    """Check `path` against the sha256 `doc[key]` (recorded in `recorded_in`); IntegrityError when it differs."""
    check_sha256(path, doc.get(key), recorded_in, "restore the run folder from a copy, or start a new run")
