"""The zero-overhead certificate of one exported artifact: structure (the proof), parity, latency, one verdict.

A certificate (``certificate.json`` beside ``model.onnx``, ``certificate_fp16.json`` beside ``model_fp16.onnx``, ...)
holds:

- ``structure``: the facts of the artifact and of the same subnet without LoRA at the same precision
  (:mod:`taslora_deploy.certificate.structure`: operator multiset, initializers, I/O, parameters, graph MACs,
  FLOPs; each side with its digest), ``identical`` and the list of differences;
- ``parity``: max abs / relative error of the artifact against the run-time MoLE model (supernet + routed experts)
  on real test images and on a deterministic probe batch, against the tolerance stated for its precision; the
  probe's inputs are a formula of (seed, shape) and its reference logits are stored, so ``taslora verify`` can
  re-check parity without the training checkpoint;
- ``latency``: the latency test (:mod:`taslora_deploy.certificate.latency`: the one-sided rule, its alpha-spending
  schedule, every look, the two-sided interval, which bound decided) or ``null`` when not measured;
- ``verdict``: ``certified`` (structure identical, parity within tolerance, latency equivalent: not slower beyond
  the margin), ``structure-certified, latency inconclusive``, ``structure-certified, latency not measured`` or
  ``failed`` (structure differs, parity breaks or latency is different: slower beyond the margin), with the
  ``reasons`` as data: ``[{"kind": "structure" | "parity" | "latency", "detail": "..."}]``;
- ``digest``: sha256 of the canonical JSON of everything else; the ONNX file carries it in its ``metadata_props``
  (:func:`metadata_props`) with the verdict, subnet, FLOPs/params and precision.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taslora_core.artifact_read import damaged, read_json_artifact
from taslora_core.atomic import atomic_write_json
from taslora_deploy.certificate.equivalence import DIFFERENT, EQUIVALENT
from taslora_deploy.certificate.structure import json_digest

__all__ = ["CERTIFICATE_FORMAT", "CERTIFIED", "LATENCY_INCONCLUSIVE", "LATENCY_NOT_MEASURED", "FAILED", "VERDICTS",
           "REASON_KINDS", "METADATA_PREFIX", "Tolerance", "precision_tolerance", "probe_inputs", "parity_record",
           "overall_verdict", "reason_lines", "build_certificate", "certificate_digest", "write_certificate",
           "read_certificate", "metadata_props"]

CERTIFICATE_FORMAT, CERTIFICATE_VERSION = "taslora-certificate", 2  # 2: one-sided latency rule, reasons as data
CERTIFIED = "certified"
LATENCY_INCONCLUSIVE = "structure-certified, latency inconclusive"
LATENCY_NOT_MEASURED = "structure-certified, latency not measured"
FAILED = "failed"
VERDICTS = (CERTIFIED, LATENCY_INCONCLUSIVE, LATENCY_NOT_MEASURED, FAILED)
REASON_KINDS = ("structure", "parity", "latency")
METADATA_PREFIX = "taslora."
PROBE_BATCH = 2
_FIX = "re-export with `taslora export`, or restore the shipped folder"


@dataclass(frozen=True)
class Tolerance:
    """The parity bound an artifact is held to: ``metric`` ("max_abs_diff" or "max_rel_diff") <= ``value``."""

    metric: str
    value: float

    def holds(self, record: dict[str, Any]) -> bool:
        """Whether a parity record's metric is within the bound (NaN never is)."""
        got = float(record[self.metric])
        return bool(np.isfinite(got) and got <= self.value)


FP16_MAX_ABS = 5e-2  # fp16 twins: max |logit diff| against the fp32 run-time model
INT8_MAX_REL = 0.25  # int8 twins: max |logit diff| / largest |logit|; the export's accuracy gate is int8's real check


def precision_tolerance(precision: str, fp32_max_abs: float) -> Tolerance:
    """The parity bound of an artifact at ``precision`` (fp32: ``fp32_max_abs``, the export's own tolerances)."""
    if precision == "fp16":
        return Tolerance("max_abs_diff", FP16_MAX_ABS)
    if precision == "int8":
        return Tolerance("max_rel_diff", INT8_MAX_REL)
    return Tolerance("max_abs_diff", float(fp32_max_abs))


def probe_inputs(seed: int, batch: int, shape: tuple[int, ...]) -> np.ndarray:
    """A deterministic input batch from integer arithmetic alone (a Weyl sequence), so it is bit-identical on
    every machine and library version: uniform values with zero mean and unit variance, float32."""
    n = int(batch) * int(np.prod(shape))
    u = ((np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(int(seed) * 40503 + 12345))
         % np.uint64(1 << 32)).astype(np.float64) / float(1 << 32)
    return ((u - 0.5) * np.sqrt(12.0)).astype(np.float32).reshape((int(batch), *shape))


def _errors(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"artifact output shape {got.shape} differs from the reference's {ref.shape}")
    diff = np.abs(got - ref)
    scale = float(np.abs(ref).max()) or 1.0
    return {"images": int(ref.shape[0]), "max_abs_diff": float(diff.max()), "max_rel_diff": float(diff.max() / scale),
            "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()) if ref.ndim == 2 else None}


def parity_record(outputs: dict[str, np.ndarray], references: dict[str, np.ndarray], tolerance: Tolerance,
                  probe: dict[str, Any] | None = None, reference_name: str = "run-time MoLE") -> dict[str, Any]:
    """Parity of an artifact's ``outputs`` against ``references`` per input set (same keys, e.g. "real", "probe"):
    per-set errors, the worst of them, the tolerance and ``ok``. ``max_rel_diff`` is max |diff| over the largest
    |reference logit|. The verdict is on the real images when there are some (``decided_on``), else on every
    set. ``probe`` (seed, batch, shape) is stored with the probe's reference logits."""
    per = {name: _errors(outputs[name], references[name]) for name in references}
    decided_on = ["real"] if "real" in per else sorted(per)
    worst = {key: max(per[n][key] for n in decided_on) for key in ("max_abs_diff", "max_rel_diff")}
    record = {"reference": reference_name, "inputs": per, "decided_on": decided_on, **worst,
              "tolerance": asdict(tolerance)}
    record["ok"] = tolerance.holds(record)
    if probe is not None and "probe" in references:
        record["probe"] = {**probe, "reference_logits": np.asarray(references["probe"], dtype=np.float64).tolist()}
    return record


def overall_verdict(structure: dict[str, Any], parity: dict[str, Any],
                    latency: dict[str, Any] | None) -> tuple[str, list[dict[str, str]]]:
    """(verdict, reasons): failed on any evidence (structure differs, parity breaks, latency slower beyond the
    margin); otherwise certified when latency is equivalent, else which part of latency is missing. Each reason is
    ``{"kind": "structure" | "parity" | "latency", "detail": one line}``."""
    reasons = []
    if not structure.get("identical"):
        diffs = structure.get("differences") or ["not compared"]
        reasons.append({"kind": "structure", "detail": f"differs from the no-LoRA subnet ({diffs[0]}"
                                                       f"{'; ...' if len(diffs) > 1 else ''})"})
    if not parity.get("ok"):
        tol = parity.get("tolerance") or {}
        reasons.append({"kind": "parity", "detail": f"{tol.get('metric')} "
                        f"{parity.get(tol.get('metric'), float('nan')):.3g} exceeds {tol.get('value')} against the "
                        f"{parity.get('reference', 'reference')}"})
    lat = None if latency is None else latency.get("verdict")
    if lat == DIFFERENT:
        slow = [f"batch {b}: {r.get('direction')} by {abs(r['ratio'] - 1) * 100:.1f}%"
                for b, r in (latency.get("batches") or {}).items() if r.get("verdict") == DIFFERENT]
        reasons.append({"kind": "latency", "detail": f"slower than the no-LoRA subnet beyond the margin "
                                                     f"({', '.join(slow)})"})
    if reasons:
        return FAILED, reasons
    if lat == EQUIVALENT:
        return CERTIFIED, []
    return (LATENCY_NOT_MEASURED, []) if lat is None else (LATENCY_INCONCLUSIVE, [])


def reason_lines(reasons: list[dict[str, str]]) -> list[str]:
    """The reasons as one line each ("parity: max_abs_diff 0.5 exceeds ..."), for reports and logs."""
    return [f"{r['kind']}: {r['detail']}" for r in reasons]


def certificate_digest(doc: dict[str, Any]) -> str:
    """sha256 of the certificate's canonical JSON without its own ``digest``."""
    return json_digest({k: v for k, v in doc.items() if k != "digest"})


def build_certificate(*, file: str, artifact: str, baseline: str, precision: str, model: dict[str, Any],
                      structure: dict[str, Any], parity: dict[str, Any], latency: dict[str, Any] | None) -> dict:
    """The certificate document (see the module docstring): ``file`` is its own name in the export folder,
    ``artifact`` / ``baseline`` the certified file and its no-LoRA twin (relative), ``model`` holds subnet, space,
    FLOPs, params, source hashes."""
    verdict, reasons = overall_verdict(structure, parity, latency)
    doc = {"format": CERTIFICATE_FORMAT, "version": CERTIFICATE_VERSION, "file": file, "artifact": artifact,
           "baseline": baseline,
           "precision": precision, "model": model, "structure": structure, "parity": parity, "latency": latency,
           "verdict": verdict, "reasons": reasons, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    # through JSON once, so the digest is of exactly what a reader gets back (tuples become lists, ...)
    doc = json.loads(json.dumps(doc, default=str))
    doc["digest"] = certificate_digest(doc)
    return doc


def write_certificate(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Write a certificate atomically (0644 under the usual umask)."""
    return atomic_write_json(path, doc)


def read_certificate(path: str | os.PathLike) -> dict[str, Any]:
    """A certificate, checked: the export record's sha256, its format and its own digest (ArtifactError, one line)."""
    doc = read_json_artifact(path, "zero-overhead certificate", _FIX)
    if doc.get("format") != CERTIFICATE_FORMAT:
        raise damaged(path, "zero-overhead certificate", f"is not a {CERTIFICATE_FORMAT} file", _FIX)
    if doc.get("digest") != certificate_digest(doc):
        raise damaged(path, "zero-overhead certificate", "was edited: its digest does not match its content", _FIX)
    return doc


def metadata_props(doc: dict[str, Any]) -> dict[str, str]:
    """What the ONNX file carries about its certificate: verdict, digest, subnet, FLOPs/params, precision, source."""
    model = doc.get("model") or {}
    p = METADATA_PREFIX
    props = {f"{p}certificate.file": str(doc.get("file")),
             f"{p}certificate.verdict": doc["verdict"], f"{p}certificate.digest": doc["digest"],
             f"{p}structure.digest": (doc.get("structure") or {}).get("artifact", {}).get("digest", ""),
             f"{p}precision": doc["precision"], f"{p}subnet": json.dumps(model.get("subnet"), sort_keys=True),
             f"{p}space": str(model.get("space")), f"{p}flops_macs": str(model.get("flops_macs")),
             f"{p}flops_autoformer": str(model.get("flops_autoformer")), f"{p}params": str(model.get("params")),
             f"{p}lora_folded": str(model.get("lora_folded")),
             f"{p}source.sha256": json.dumps(model.get("source_sha256"), sort_keys=True),
             f"{p}producer": "taslora export"}
    return props
