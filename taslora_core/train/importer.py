"""`import_supernet`: an official AutoFormer checkpoint as a new `supernets` run."""

from __future__ import annotations

from pathlib import Path

from taslora_core.atomic import atomic_write_json
from taslora_core.checkpoint import file_sha256, load_autoformer_supernet, save_supernet
from taslora_core.space import SearchSpace
from taslora_core.train.run_files import SUMMARY
from taslora_core.workspace import new_run


def import_supernet(ckpt: str | Path, space: str | SearchSpace, workdir: str | Path, name: str | None = None) -> Path:
    """Turn an official AutoFormer checkpoint into a new `supernets` run (weights-only loading)."""
    sp = SearchSpace.resolve(space) if isinstance(space, str) else space
    model = load_autoformer_supernet(ckpt, sp)
    run_dir = new_run(workdir, "supernets", name or f"{sp.name}-imported")
    save_supernet(run_dir, model, extra={
        "kind": "imported", "imported_from": str(Path(ckpt).resolve()), "imported_sha256": file_sha256(ckpt),
    })
    atomic_write_json(run_dir / SUMMARY, {"kind": "imported", "run": run_dir.name, "space": sp.name,
                                          "imported_from": str(Path(ckpt).resolve())})
    return run_dir
