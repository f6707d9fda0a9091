"""Integrity of artifacts: the sha256 a run records for the files it writes, and the check on load.

Where hashes are recorded:

- a supernet run: `space.json` -> "sha256": {"supernet.safetensors": hex, "split.json": hex};
- a MoLE run: `mole.json` -> "sha256": {"mole.safetensors": hex, "split.json": hex} (and, as before,
  "supernet_sha256" for the supernet it was trained on);
- an export: `report.json` -> "hashes": {relative path: hex} for every file the export wrote (files left in the
  folder by an earlier export are listed under "not_written" and refused by the checked readers);
- a training run's resume state: `train_state.sha256.json` -> "sha256": {"train_state.pt": hex,
  "train_config.json": hex} and "previous": the state's hash before the last save (written before each
  state's rename, so a kill between the two files leaves a consistent pair);
- the files a run writes before its final record, checked wherever they are read (`check_run_file`):
  train_config.json and summary.json in `space.json` / `mole.json`; a search's best.json and pareto.json in
  its summary.json.

A file whose hash differs from the record is refused (`IntegrityError`, one line naming the file) unless the
user passes the explicit override: `taslora --allow-modified ...`, or TASLORA_ALLOW_MODIFIED=1 for library
use; the file is then loaded with a warning on stderr. Files written before hashes were recorded keep loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from taslora_core.atomic import atomic_write, atomic_write_json
from taslora_core.state_check import CheckpointError

ALLOW_MODIFIED_ENV = "TASLORA_ALLOW_MODIFIED"
SHA256_KEY = "sha256"  # checkpoints: the key of the {file name: hex} map in their JSON
EXPORT_RECORD = "report.json"  # taslora_deploy.artifacts.REPORT: the export folder's record (tested equal)
EXPORT_HASHES_KEY = "hashes"  # the {relative path: hex} map in report.json
EXPORT_NOT_WRITTEN_KEY = "not_written"  # report.json: files already in --out that this export did not write
PREVIOUS_KEY = "previous"  # a hashed-write record: {name: [hex, ...]} the file on disk may still have (a killed rename)
# the records of a run folder that may hold the sha256 of its other files, in the order they are consulted:
# space.json / mole.json (checkpoint.SPACE_JSON, mole_io.MOLE_CONFIG), a search's summary.json
# (workspace.SUMMARY_JSON) and the training state's record (train.loop.TRAIN_STATE_RECORD); tested equal
RUN_RECORDS = ("space.json", "mole.json", "summary.json", "train_state.sha256.json")
# written before a run's final record and recorded there (besides the weights and split.json)
RUN_FILES_RECORDED = ("split.json", "train_config.json", "summary.json", "best.json", "pareto.json")
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


def allow_modified_flag() -> bool:
    """The process-wide override as set by `set_allow_modified` (the environment variable not included)."""
    return _allow_modified


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


def tree_hashes(directory: str | Path, exclude: Iterable[str] = (EXPORT_RECORD,),
                only: Iterable[str] | None = None) -> dict[str, str]:
    """{relative posix path: sha256} of every file under `directory` (of those in `only`, if given) except
    `exclude` and hidden temp files."""
    directory = Path(directory)
    skip = set(exclude)
    wanted = None if only is None else set(only)
    out: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel not in skip and not path.name.startswith(".") and (wanted is None or rel in wanted):
            out[rel] = file_sha256(path)
    return out


def file_stamps(directory: str | Path) -> dict[str, tuple[int, int, int]]:
    """{relative posix path: (inode, mtime_ns, size)} of every file under `directory`: what was there before a
    writer ran (a file it rewrites, atomically or in place, gets a new stamp)."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    out = {}
    for path in directory.rglob("*"):
        if path.is_file():
            st = path.stat()
            out[path.relative_to(directory).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def written_since(directory: str | Path, before: Mapping[str, tuple[int, int, int]]) -> tuple[list[str], list[str]]:
    """(files new or changed since the `before` stamps, files left exactly as they were) under `directory`."""
    now = file_stamps(directory)
    written = sorted(rel for rel, stamp in now.items() if before.get(rel) != stamp)
    return written, sorted(rel for rel in now if rel not in written)


def write_hashed(path: str | Path, writer: Callable[[Path], None], record: str | Path,
                 also: Iterable[str | Path] = ()) -> None:
    """Atomically write `path` with writer(tmp) and record its sha256 (and that of the files `also`) in the JSON
    `record`. The record is written before the rename and keeps the replaced file's hash under "previous", so
    a kill between the two leaves a pair that still checks (`check_hashed`); once the rename is done the record
    is rewritten without "previous", so the next write's "previous" is always the file that is on disk."""
    path, record = Path(path), Path(record)
    on_disk: list[str] = []  # hashes the file now on disk may have: the last record's, and its "previous" when
    if record.is_file():      # that write was killed before its rename (the record then still holds "previous")
        try:
            doc = json.loads(record.read_text(encoding="utf-8"))
            last, before = doc.get(SHA256_KEY) or {}, (doc.get(PREVIOUS_KEY) or {}).get(path.name) or []
            on_disk = [h for h in [last.get(path.name), *([before] if isinstance(before, str) else before)] if h]
        except (OSError, ValueError, AttributeError):
            on_disk = []

    hashes: dict[str, str] = {}

    def write_then_record(tmp: Path) -> None:
        writer(tmp)
        hashes.update({path.name: file_sha256(tmp), **{Path(p).name: file_sha256(p) for p in also if Path(p).is_file()}})
        atomic_write_json(record, {SHA256_KEY: hashes, PREVIOUS_KEY: {path.name: on_disk} if on_disk else {}})

    atomic_write(path, write_then_record)
    atomic_write_json(record, {SHA256_KEY: hashes, PREVIOUS_KEY: {}})


def check_hashed(path: str | Path, record_doc: Mapping, record_path: str | Path, fix: str) -> None:
    """Check a file written by `write_hashed` against its record (the current or the previous hash)."""
    path = Path(path)
    current = (record_doc.get(SHA256_KEY) or {}) if isinstance(record_doc.get(SHA256_KEY), Mapping) else {}
    previous = (record_doc.get(PREVIOUS_KEY) or {}) if isinstance(record_doc.get(PREVIOUS_KEY), Mapping) else {}
    want = current.get(path.name)
    if not want:
        return
    got = file_sha256(path)
    before = previous.get(path.name) or []
    if got in ([before] if isinstance(before, str) else before):
        return  # killed after the record was written, before the new file was renamed into place
    check_sha256(path, want, record_path, fix, got=got)


def check_sha256(path: str | Path, want: str | None, recorded_in: str | Path, fix: str, got: str | None = None) -> bool:
    """Compare `path`'s sha256 (`got` when the caller already has it) with `want` (recorded in `recorded_in`).
    True when equal; False when nothing was recorded (old files) or the override lets a modified file through
    (with a warning); IntegrityError else."""
    if not want:
        return False
    got = got or file_sha256(path)
    if got == want:
        return True
    problem = (f"{path} was modified since it was written: its sha256 {got[:12]}... differs from "
               f"{want[:12]}... recorded in {recorded_in}")
    if allow_modified():
        print(f"warning: {problem}; loading it anyway (--allow-modified)", file=sys.stderr)
        return False
    raise IntegrityError(f"{problem}; {fix}, or {OVERRIDE_HINT}")


def _record_doc(record: Path) -> dict | None:
    try:
        doc = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a damaged record is reported by whoever reads it, not here
    return doc if isinstance(doc, dict) else None


def export_record_hash(path: str | Path) -> tuple[str, Path] | None:
    """(recorded sha256, record file) of a file of an export folder (or of its baseline/ subfolder), if any.
    A file the export found in its folder and did not write is an ArtifactError."""
    path = Path(path).absolute()
    for folder in (path.parent, path.parent.parent):
        record = folder / EXPORT_RECORD
        if not record.is_file() or record == path:
            continue
        doc = _record_doc(record)
        rel = path.relative_to(folder).as_posix()
        if doc is not None and rel in (doc.get(EXPORT_NOT_WRITTEN_KEY) or ()):
            raise ArtifactError(f"{path} was not written by the export recorded in {record} (it was already in the "
                                "folder, left by an earlier export); delete it, or export into a new folder")
        hashes = doc.get(EXPORT_HASHES_KEY) if doc is not None else None
        if isinstance(hashes, dict):
            want = hashes.get(rel)
            if want:
                return want, record
        return None
    return None


def check_export_file(path: str | Path) -> None:
    """Check a file of an export folder against the hash its report.json recorded (nothing recorded: no check)."""
    found = export_record_hash(path)
    if found is not None:
        check_sha256(path, found[0], found[1], "re-export it with `taslora export` or restore the shipped file")


def check_run_file(path: str | Path) -> None:
    """Check a file of a run folder against the sha256 one of the run's records (`RUN_RECORDS`) holds for it
    (nothing recorded, as in runs written before hashes were recorded: no check)."""
    path = Path(path)
    if path.name not in RUN_FILES_RECORDED:
        return
    for name in RUN_RECORDS:
        record = path.parent / name
        if record == path or not record.is_file():
            continue
        doc = _record_doc(record)
        hashes = doc.get(SHA256_KEY) if doc is not None else None
        if isinstance(hashes, Mapping) and hashes.get(path.name):
            check_sha256(path, hashes[path.name], record,
                         "restore the run folder from a copy (every file of one run), or start a new run")
            return
