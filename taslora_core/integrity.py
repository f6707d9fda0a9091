"""Integrity of artifacts: the sha256 a run records for the files it writes, and the check on load.

Where hashes are recorded:

- a supernet run: `space.json` -> "sha256": {"supernet.safetensors": hex, "split.json": hex};
- a MoLE run: `mole.json` -> "sha256": {"mole.safetensors": hex, "split.json": hex} (and, as before,
  "supernet_sha256" for the supernet it was trained on);
- an export: `report.json` -> "hashes": {relative path: hex} for every file of the folder except report.json.

A file whose hash differs from the record is refused (`IntegrityError`, one line naming the file) unless the
user passes the explicit override: `taslora --allow-modified ...`, or TASLORA_ALLOW_MODIFIED=1 for library
use; the file is then loaded with a warning on stderr. Files written before hashes were recorded keep loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from taslora_core.state_check import CheckpointError

ALLOW_MODIFIED_ENV = "TASLORA_ALLOW_MODIFIED"
SHA256_KEY = "sha256"  # checkpoints: the key of the {file name: hex} map in their JSON
EXPORT_RECORD = "report.json"  # taslora_deploy.artifacts.REPORT: the export folder's record (tested equal)
EXPORT_HASHES_KEY = "hashes"  # the {relative path: hex} map in report.json
OVERRIDE_HINT = "pass --allow-modified (TASLORA_ALLOW_MODIFIED=1) to load it anyway"

_allow_modified: bool = False


class ArtifactError(CheckpointError, ValueError):
    """A file is missing, damaged, foreign or modified: one line naming the file, what is wrong and the fix.

    A CheckpointError (callers that catch that keep working) and a ValueError (the CLI reports it in one line)."""


class IntegrityError(ArtifactError):
    """A file's sha256 differs from the one recorded when it was written."""


def set_allow_modified(flag: bool) -> None:
    """The process-wide override (the CLI's --allow-modified); TASLORA_ALLOW_MODIFIED=1 also enables it."""
    global _allow_modified
    _allow_modified = bool(flag)


def allow_modified() -> bool:
    """True when modified files may load (with a warning) instead of being refused."""
    return _allow_modified or os.environ.get(ALLOW_MODIFIED_ENV, "").strip().lower() in ("1", "true", "yes")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hashes_of(directory: str | Path, names: Iterable[str]) -> dict[str, str]:
    """{name: sha256} of the files `names` (relative to `directory`) that exist."""
    directory = Path(directory)
    return {name: file_sha256(directory / name) for name in names if (directory / name).is_file()}


def tree_hashes(directory: str | Path, exclude: Iterable[str] = (EXPORT_RECORD,)) -> dict[str, str]:
    """{relative posix path: sha256} of every file under `directory` except `exclude` and hidden temp files."""
    directory = Path(directory)
    skip = set(exclude)
    out: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel not in skip and not path.name.startswith("."):
            out[rel] = file_sha256(path)
    return out


def check_sha256(path: str | Path, want: str | None, recorded_in: str | Path, fix: str) -> bool:
    """Compare `path`'s sha256 with `want` (recorded in `recorded_in`). True when equal; False when nothing was
    recorded (old files) or the override lets a modified file through (with a warning); IntegrityError else."""
    if not want:
        return False
    got = file_sha256(path)
    if got == want:
        return True
    problem = (f"{path} was modified since it was written: its sha256 {got[:12]}... differs from "
               f"{want[:12]}... recorded in {recorded_in}")
    if allow_modified():
        print(f"warning: {problem}; loading it anyway (--allow-modified)", file=sys.stderr)
        return False
    raise IntegrityError(f"{problem}; {fix}, or {OVERRIDE_HINT}")


def check_recorded(directory: str | Path, record: Mapping, record_path: str | Path, fix: str,
                   names: Iterable[str] | None = None) -> None:
    """Check the files of `directory` against the {name: sha256} map `record[SHA256_KEY]` (only `names` if given)."""
    recorded = record.get(SHA256_KEY) or {}
    if not isinstance(recorded, Mapping):
        return
    for name, want in recorded.items():
        if (names is None or name in names) and (Path(directory) / name).is_file():
            check_sha256(Path(directory) / name, want, record_path, fix)


def export_record_hash(path: str | Path) -> tuple[str, Path] | None:
    """(recorded sha256, record file) of a file of an export folder (or of its baseline/ subfolder), if any."""
    path = Path(path).absolute()
    for folder in (path.parent, path.parent.parent):
        record = folder / EXPORT_RECORD
        if not record.is_file() or record == path:
            continue
        try:
            doc = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a damaged record is reported by whoever reads it, not here
        hashes = doc.get(EXPORT_HASHES_KEY) if isinstance(doc, dict) else None
        if isinstance(hashes, dict):
            want = hashes.get(path.relative_to(folder).as_posix())
            if want:
                return want, record
        return None
    return None


def check_export_file(path: str | Path) -> None:
    """Check a file of an export folder against the hash its report.json recorded (nothing recorded: no check)."""
    found = export_record_hash(path)
    if found is not None:
        check_sha256(path, found[0], found[1], "re-export it with `taslora export` or restore the shipped file")
