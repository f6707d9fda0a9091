"""Atomic file writing: the one implementation every artifact writer uses.

A file is written to a temporary name in its own folder, flushed to disk, given the permissions the user's
umask allows (0644 under the usual 022: artifacts are shipped to other users and containers), then renamed
over the target. A reader sees the old file or the new one, never half of one; a failed write leaves the
previous file untouched and no temporary behind.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
           "atomic_save_safetensors", "json_default", "umask_mode", "DiskFullError"]

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """The disk (or quota) filled up while writing an artifact; the previous file is intact."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ENOSPC, f"disk full while writing {path}; the previous file is intact: "
                                       "free space and rerun (training: rerun with --resume)")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def umask_mode(base: int = 0o666) -> int:
    """`base` with the process umask applied (what open() would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call writer(tmp) for a temp file next to `path`, fsync it, then rename over `path` (all or nothing).

    `writer` may create side files named after `tmp` (e.g. ONNX external data); they are the writer's to
    clean up. The final file gets the umask's permissions, not mkstemp's owner-only 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise DiskFullError(path) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    """Atomically write a binary file."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def json_default(obj: Any) -> Any:
    """json.dumps fallback for the types our records hold (paths, tensors)."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write an indented JSON file."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """Atomically torch.save an object made of tensors, numbers, strings, lists and dicts."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically write tensors (made contiguous, on CPU) to a safetensors file."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=metadata))
