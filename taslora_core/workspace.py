"""The workspace (`--workdir`, default ./taslora-runs): where runs live and how commands find the latest one.

Layout, one folder per run, named `<UTC timestamp>-<name>` so that names sort by creation time:

    supernets/<run>/   supernet.safetensors, space.json, train state, metrics.jsonl, split.json
    mole/<run>/        mole.safetensors, mole.json (names its supernet), train state, metrics.jsonl, split.json
    searches/<run>/    best.json, history.jsonl, fitness_vs_flops.png, state.json
    specialized/<run>/ specialized.safetensors (one subnet's final weight deltas), specialize.json, log.txt,
                       train state (`taslora specialize`; taslora_core.specialize.run_files)
    exports/<run>/     model.safetensors, config.json, model.onnx, model.plan, report.json
    exports/<family>/  member-<i>-<flops>/ (each an export folder), family.json, family.md, family.png

A run counts as finished once every file of `FINISHED_FILES[kind]` exists (the record written last, so a run
still being written never counts) and, for exports, once report.json is no longer marked "in_progress"; a
family folder (`export --family`) once family.json is no longer marked "in_progress" and family.md (written
after it) exists. `latest` only returns finished runs, and for exports only single exports (what `bench` and
`check-overhead` take), never a family folder. Run folders are created with an exclusive mkdir (a suffix on collision),
so two commands started in the same second never share one.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_WORKDIR = Path("taslora-runs")
SUMMARY_JSON = "summary.json"  # every kind: the run's key numbers
BEST_JSON = "best.json"  # searches: the chosen subnet (what `taslora export` takes by default)

KINDS: dict[str, str] = {
    "supernets": "supernet.safetensors",
    "mole": "mole.safetensors",
    "searches": BEST_JSON,
    "specialized": "specialized.safetensors",
    "exports": "config.json",
}
"""Run kind -> the file whose presence marks a usable run (kept for callers; see FINISHED_FILES)."""

FINISHED_FILES: dict[str, tuple[str, ...]] = {
    "supernets": ("supernet.safetensors", "space.json"),  # space.json is written after the weights
    "mole": ("mole.safetensors", "mole.json"),  # mole.json is written after the weights
    "searches": (BEST_JSON,),
    "specialized": ("specialized.safetensors", "specialize.json"),  # specialize.json is written last
    "exports": ("config.json", "report.json"),
}
EXPORT_IN_PROGRESS = "in_progress"  # report.json / family.json key while the export is still writing the folder
FAMILY_JSON = "family.json"  # an `export --family` folder's record (taslora_deploy.family)
FAMILY_MD = "family.md"  # its table, written after the final family.json


class WorkspaceError(RuntimeError):
    """Nothing usable in the workspace for what a command needs."""


@dataclass(frozen=True)
class Run:
    """One run folder."""

    kind: str
    path: Path

    @property
    def name(self) -> str:
        """Folder name."""
        return self.path.name

    def summary(self) -> dict[str, Any]:
        """Key numbers recorded by the run (its summary.json), or {}."""
        path = self.path / SUMMARY_JSON
        try:
            doc = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except (OSError, ValueError):  # damaged: `taslora runs` shows the run without its numbers
            return {}
        return doc if isinstance(doc, dict) else {}


def is_family(path: Path) -> bool:
    """True for an `export --family` folder (family.json and no export of its own)."""
    return (path / FAMILY_JSON).exists() and not (path / "report.json").exists()


def _not_in_progress(record: Path) -> bool:
    try:
        return not json.loads(record.read_text(encoding="utf-8")).get(EXPORT_IN_PROGRESS)
    except (OSError, ValueError, AttributeError):
        return True  # a damaged record is reported by the command that reads it, naming the file


def is_finished(kind: str, path: Path) -> bool:
    """True when run folder `path` of `kind` was completely written (see the module docstring)."""
    if kind == "exports" and is_family(path):
        return (path / FAMILY_MD).exists() and _not_in_progress(path / FAMILY_JSON)
    if not all((path / name).exists() for name in FINISHED_FILES[kind]):
        return False
    if kind == "exports":
        return _not_in_progress(path / "report.json")
    return True


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown run kind '{kind}'; one of {', '.join(KINDS)}")


def new_run(workdir: str | Path, kind: str, name: str | None = None) -> Path:
    """Create and return a fresh run folder `workdir/kind/<timestamp>-<name>`."""
    _check_kind(kind)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or kind.rstrip("s")).strip("-") or "run"
    base = Path(workdir) / kind
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = base / (f"{stamp}-{slug}" if i == 0 else f"{stamp}-{slug}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise WorkspaceError(f"cannot create a run folder under {base}")


def runs(workdir: str | Path, kind: str, finished_only: bool = True) -> list[Run]:
    """Runs of one kind, oldest first."""
    _check_kind(kind)
    base = Path(workdir) / kind
    if not base.is_dir():
        return []
    found = [
        Run(kind, p)
        for p in sorted(base.iterdir())
        if p.is_dir() and (not finished_only or is_finished(kind, p))
    ]
    return found


def latest(workdir: str | Path, kind: str, hint: str) -> Path:
    """The newest finished run of `kind` (exports: the newest single export, never a family folder); raises
    WorkspaceError whose message says how to make one (`hint`)."""
    found = [r for r in runs(workdir, kind) if not (kind == "exports" and is_family(r.path))]
    if not found:
        raise WorkspaceError(f"no finished {kind} run in workspace {workdir}; {hint}")
    return found[-1].path
