"""Zero-overhead checks of two ONNX files (structure) and the `check-overhead` verb (structure + latency, re-checked
against the export's certificate).

Typical use: A = plain ViT of an architecture, B = the same architecture after folding the TAS-LoRA experts into
its weights. Structurally they must be identical (same ops, parameter shapes/counts, I/O, MACs counted on the
graph, FLOPs) and the folded model no slower than the baseline beyond the margin: the one-sided upper bound of the
folded/baseline ratio below ``1 + margin`` (:mod:`taslora_deploy.certificate.equivalence`; slower beyond it fails,
faster passes with a note). The structure facts are
:mod:`taslora_deploy.certificate.structure`'s; the timing is :mod:`taslora_deploy.timing` on the runners of
:mod:`taslora_deploy.runners` (re-exported here for existing callers).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taslora_core.atomic import atomic_write_json
from taslora_core.workspace import DEFAULT_WORKDIR, latest
from taslora_deploy.artifacts import (MODEL_CONFIG, OVERHEAD_REPORT, PRECISION_CERTIFICATE, PRECISION_ONNX,
                                      PRECISION_PLAN, baseline_twin)
from taslora_deploy.certificate.equivalence import DIFFERENT
from taslora_deploy.runners import ort_runner, torch_runner
from taslora_deploy.timing import interleaved_latency

__all__ = [
    "OverheadError",
    "structural_compare",
    "assert_same_structure",
    "interleaved_latency",
    "ort_runner",
    "torch_runner",
    "OverheadCheck",
    "check_overhead",
]

FlopsArg = float | int | Callable[[Path], float] | None


class OverheadError(AssertionError):
    """Two artefacts that should be structurally identical are not."""


def _resolve_flops(flops: FlopsArg, path: Path) -> float | None:
    if flops is None:
        return None
    return float(flops(path)) if callable(flops) else float(flops)


def structural_compare(onnx_a: str | os.PathLike, onnx_b: str | os.PathLike, flops_a: FlopsArg = None,
                       flops_b: FlopsArg = None) -> dict:
    """Compare two ONNX files structurally (:func:`taslora_deploy.certificate.structure.compare_structures` of
    their facts).

    Compared: op-type histograms, graph I/O signatures, floating-point parameter shapes per use and their element
    count (insensitive to the exporter merging initializers that hold identical values), MatMul/Gemm/Conv MACs
    counted on the graph, and FLOPs when given (a number for each model, or a callable ``path -> flops``).
    Stored-initializer differences that leave the parameters the graph reads unchanged are ``notes``.

    Returns ``{"a", "b", "op_histogram_a", "op_histogram_b", "params_a", "params_b", "stored_params_a",
    "stored_params_b", "flops_a", "flops_b", "graph_macs_a", "graph_macs_b", "digest_a", "digest_b", "equal",
    "differences", "notes"}``.
    """
    from taslora_deploy.certificate.structure import compare_structures, onnx_structure

    pa, pb = Path(onnx_a), Path(onnx_b)
    fa, fb = _resolve_flops(flops_a, pa), _resolve_flops(flops_b, pb)
    if (fa is None) != (fb is None):
        raise ValueError("pass FLOPs for both models or for neither")
    a, b = onnx_structure(pa, fa), onnx_structure(pb, fb)
    cmp = compare_structures(a, b)
    return {"a": str(pa), "b": str(pb), "op_histogram_a": a["ops"], "op_histogram_b": b["ops"],
            "params_a": a["params"], "params_b": b["params"], "stored_params_a": a["stored_params"],
            "stored_params_b": b["stored_params"], "flops_a": fa, "flops_b": fb, "graph_macs_a": a["graph_macs"],
            "graph_macs_b": b["graph_macs"], "digest_a": a["digest"], "digest_b": b["digest"],
            "equal": cmp["identical"], "differences": cmp["differences"], "notes": cmp["notes"]}


def assert_same_structure(onnx_a: str | os.PathLike, onnx_b: str | os.PathLike, flops_a: FlopsArg = None,
                          flops_b: FlopsArg = None) -> dict:
    """:func:`structural_compare`, raising :class:`OverheadError` listing every difference."""
    report = structural_compare(onnx_a, onnx_b, flops_a=flops_a, flops_b=flops_b)
    if not report["equal"]:
        raise OverheadError(
            f"{report['a']} and {report['b']} differ structurally:\n  " + "\n  ".join(report["differences"]))
    return report


# --------------------------------------------------------------------------- `taslora check-overhead`


@dataclass
class OverheadCheck:
    """Outcome of :func:`check_overhead` (also written to ``overhead.json`` in the export folder)."""

    export_dir: Path
    structure: dict[str, Any]
    latency: dict[str, Any]
    report_path: Path
    certificate: dict[str, Any] | None = None  # the export's certificate of the checked artifact (None: none shipped)

    @property
    def same_structure(self) -> bool:
        """Same ops, parameters, I/O, MACs and FLOPs as the no-LoRA twin (and the certified facts, if any)."""
        return bool(self.structure.get("equal"))

    @property
    def latency_verdict(self) -> str:
        """equivalent (not slower beyond the margin) / different (slower) / inconclusive, measured here."""
        return str(self.latency.get("verdict"))

    @property
    def latency_ok(self) -> bool:
        """Latency is not different (inconclusive is a warning, not a failure)."""
        return self.latency_verdict != DIFFERENT

    @property
    def ok(self) -> bool:
        """Neither structure nor latency is evidence of overhead."""
        return self.same_structure and self.latency_ok


def _structure_here(directory: Path, doc: dict[str, Any] | None, artifact: Path, baseline: Path) -> dict[str, Any]:
    """The structure comparison of the two files, plus the re-check against the certificate when there is one."""
    from taslora_core.artifact_read import read_json_artifact
    from taslora_deploy.certificate.check import recheck_structure

    config = read_json_artifact(directory / MODEL_CONFIG, "model config", "re-export it with `taslora export`") \
        if (directory / MODEL_CONFIG).exists() else {}
    f = config.get("flops_macs")
    out = structural_compare(artifact, baseline, flops_a=f, flops_b=f)
    if doc is not None and doc["artifact"] == artifact.relative_to(directory).as_posix():
        try:
            out["certificate"] = {"file": doc["file"], "matches": True, "detail": recheck_structure(directory, doc)}
        except ValueError as err:
            out["certificate"] = {"file": doc["file"], "matches": False, "detail": " ".join(str(err).split())}
            out["equal"] = False
            out["differences"] = [*out["differences"], f"certificate {doc['file']}: {out['certificate']['detail']}"]
    return out


def _trt_plans(stack: ExitStack, directory: Path, precision: str, baseline: Path, shape: tuple[int, ...] | None) -> tuple[Path, Path]:
    """(baseline, folded) TensorRT plans: the folded one shipped, the no-LoRA one built now into a temporary folder."""
    from taslora_deploy.trt_engine import build_engine

    folded = directory / PRECISION_PLAN[precision]
    if not folded.is_file():
        raise FileNotFoundError(f"{folded} does not exist; export with --trt to check the TensorRT engine")
    if shape is None:
        raise ValueError(f"{directory / MODEL_CONFIG} records no input_shape; needed to build the baseline engine")
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="taslora-baseline-plan-")))
    return build_engine(baseline, tmp / PRECISION_PLAN[precision], shape), folded


def check_overhead(
    export_dir: str | os.PathLike | None = None,
    *,
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    config: Any = None,
    runtime: str = "ort-cpu",
    precision: str = "fp32",
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> OverheadCheck:
    """Zero-overhead re-check of an export folder (default: the workspace's latest export) on this machine.

    A = the no-LoRA twin (``baseline/model.onnx``, or ``baseline/model_<p>.onnx`` for ``precision``), B = the
    exported artifact: structural comparison (also against the facts its certificate recorded) and the latency
    latency test (``config``: a :class:`~taslora_deploy.certificate.latency.LatencyTestConfig`, default
    :data:`~taslora_deploy.certificate.latency.RECHECK_TEST`) on ``runtime``
    (``trt``/``trt-graph``: the shipped engine against a no-LoRA engine built now). Writes ``overhead.json`` there.
    Raises FileNotFoundError when a file is missing.
    """
    from taslora_deploy.certificate.check import rerun_latency
    from taslora_deploy.certificate.document import read_certificate
    from taslora_deploy.certificate.latency import RECHECK_TEST

    directory = Path(export_dir) if export_dir is not None else latest(
        workdir, "exports", "run `taslora export --onnx` first")
    if precision not in PRECISION_ONNX:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_ONNX)}, not '{precision}'")
    artifact, baseline = directory / PRECISION_ONNX[precision], baseline_twin(directory, precision)
    for path in (artifact, baseline):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; re-run `taslora export --onnx` (with --precision "
                                    f"{precision} for a twin)")
    cert_path = directory / PRECISION_CERTIFICATE[precision]
    doc = read_certificate(cert_path) if cert_path.is_file() else None
    structure = _structure_here(directory, doc, artifact, baseline)
    config = config or RECHECK_TEST
    rel = artifact.relative_to(directory).as_posix(), baseline.relative_to(directory).as_posix()
    with ExitStack() as stack:
        plans = None
        if runtime.startswith("trt"):
            plans = _trt_plans(stack, directory, precision, baseline, _input_shape(directory))
        latency = rerun_latency(directory, doc, rel[0], rel[1], config, runtime, threads, plans=plans, log=log)
    certified = None if doc is None else {"file": doc["file"], "verdict": doc["verdict"],
                                          "latency": (doc.get("latency") or {}).get("verdict")}
    report_path = atomic_write_json(directory / OVERHEAD_REPORT, {"structure": structure, "latency": latency,
                                                                   "certificate": certified})
    return OverheadCheck(directory, structure, latency, report_path, doc)


def _input_shape(directory: Path) -> tuple[int, ...] | None:
    from taslora_core.artifact_read import read_json_artifact

    if not (directory / MODEL_CONFIG).is_file():
        return None
    config = read_json_artifact(directory / MODEL_CONFIG, "model config", "re-export it with `taslora export`")
    return tuple(config.get("input_shape", ())) or None
