"""THE checked readers of artifacts: JSON records, safetensors, ONNX, weights-only torch files, raw bytes.

Each turns a missing, empty, truncated, garbled or foreign file into one `ArtifactError` (a ValueError: the CLI
prints it as one line, exit 2) whose message names the file, what is wrong and what to do. Files of an export
folder are also checked against the sha256 its report.json recorded (`integrity.check_export_file`), and JSON
files of a run folder against the sha256 the run's record holds for them (`integrity.check_run_file`).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taslora_core.integrity import ArtifactError, check_export_file, check_run_file, check_sha256

__all__ = ["ArtifactError", "read_json_artifact", "load_safetensors_checked", "read_safetensors_header", "load_onnx_checked",
           "load_torch_checked", "read_bytes_checked", "damaged"]


def _reason(err: BaseException) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split())  # torch colours parts of its messages
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


def damaged(path: str | Path, what: str, problem: str, fix: str) -> ArtifactError:
    """The one-line error of a bad artifact: '<what> <path> <problem>; <fix>'."""
    return ArtifactError(f"{what} {path} {problem}; {fix}")


def _existing(path: str | Path, what: str, fix: str) -> Path:
    """`path` if it is a non-empty file; ArtifactError naming it otherwise."""
    path = Path(path)
    if not path.exists():
        raise damaged(path, what, "does not exist", fix)
    if not path.is_file():
        raise damaged(path, what, "is not a file", fix)
    if path.stat().st_size == 0:
        raise damaged(path, what, "is empty (0 bytes; an interrupted copy or write?)", fix)
    return path


def read_json_artifact(path: str | Path, what: str, fix: str, expect: type | None = dict) -> Any:
    """The parsed JSON of `path` (a `what`, e.g. "search result"); `expect`: the required top-level type."""
    path = _existing(path, what, fix)
    check_export_file(path)
    check_run_file(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise damaged(path, what, "is damaged (not UTF-8 text)", fix) from None
    except json.JSONDecodeError as err:
        raise damaged(path, what, f"is damaged or truncated (invalid JSON: {err.msg} at line {err.lineno})", fix) from None
    except OSError as err:
        raise damaged(path, what, f"cannot be read ({_reason(err)})", fix) from None
    if expect is not None and not isinstance(doc, expect):
        raise damaged(path, what, f"holds a JSON {type(doc).__name__}, not a {expect.__name__}", fix)
    return doc


def format_problem(doc: Any, what: str, fmt: str, version: int, required: Sequence[str]) -> str | None:
    """Why a JSON artifact's header is not one this taslora reads (wrong "format" tag, a newer or missing
    "version", missing keys), or None when it is."""
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        tag = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        return f"is not a taslora {what} (format {tag!r}, expected '{fmt}')"
    if not isinstance(doc.get("version"), int) or doc["version"] > version:
        return f"has version {doc.get('version')!r}; this taslora reads <= {version}"
    missing = [k for k in required if k not in doc]
    return f"lacks {', '.join(missing)}" if missing else None


def load_safetensors_checked(path: str | Path, what: str, fix: str, sha256: str | None = None,
                             recorded_in: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """The tensors of a safetensors file, after its sha256 check (`sha256` recorded in `recorded_in`, else the
    export record of its folder)."""
    from safetensors.torch import load_file

    path = _existing(path, what, fix)
    if sha256:
        check_sha256(path, sha256, recorded_in or "its run record", fix)
    else:
        check_export_file(path)
    try:
        return load_file(str(path), device=device)
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean an unreadable file
        raise damaged(path, what, f"is damaged or truncated ({_reason(err)})", fix) from None


def read_safetensors_header(path: str | Path, what: str, fix: str) -> dict[str, Any]:
    """The JSON header of a safetensors file ({name: {dtype, shape, data_offsets}}, "__metadata__"), checked."""
    path = _existing(path, what, fix)
    check_export_file(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= path.stat().st_size - 8:
            raise damaged(path, what, "is damaged or truncated (invalid safetensors header length)", fix)
        try:
            header = json.loads(fh.read(length).decode("utf-8"))
        except ValueError as err:
            raise damaged(path, what, f"is damaged (unreadable safetensors header: {_reason(err)})", fix) from None
    if not isinstance(header, dict) or not all(
            isinstance(v, dict) and "dtype" in v and "shape" in v for k, v in header.items() if k != "__metadata__"):
        raise damaged(path, what, "is damaged (safetensors header without dtype/shape entries)", fix)
    return header


def load_onnx_checked(path: str | Path, what: str = "ONNX model", fix: str = "re-export it with `taslora export`",
                      load_external_data: bool = False) -> Any:
    """An `onnx.ModelProto` read from `path` (after the export record's sha256 check)."""
    import onnx

    path = _existing(path, what, fix)
    check_export_file(path)
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as err:  # noqa: BLE001 - protobuf DecodeError and friends
        raise damaged(path, what, f"is damaged or truncated ({_reason(err)})", fix) from None
    if not model.graph.node:
        raise damaged(path, what, "holds no ONNX graph (not an ONNX model?)", fix)
    return model


def load_torch_checked(path: str | Path, what: str, fix: str, safe_globals: Sequence[Any] = ()) -> Any:
    """`torch.load(path, weights_only=True)` on CPU (`safe_globals`: extra classes allowed while reading)."""
    import torch

    path = _existing(path, what, fix)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        holds = f" (it references {found.group(1)})" if found else ""
        raise damaged(path, what, f"holds objects other than tensors{holds}: torch.load(weights_only=True) refused "
                      "to unpickle them and nothing was executed", fix) from None
    except Exception as err:  # noqa: BLE001 - truncated zip, unreadable records
        raise damaged(path, what, f"cannot be read with torch.load(weights_only=True) ({_reason(err)})", fix) from None


def read_bytes_checked(path: str | Path, what: str, fix: str) -> bytes:
    """The bytes of a binary artifact (e.g. a TensorRT plan), after the export record's sha256 check."""
    path = _existing(path, what, fix)
    check_export_file(path)
    return path.read_bytes()
