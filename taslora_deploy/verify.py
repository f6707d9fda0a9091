"""The `verify` verb: re-check an export folder as shipped, before a deployment pipeline promotes it.

Checks, each pass / fail / skipped with a one-line detail (`VerifyResult.checks`):

- `sha256 <file>`: every file report.json recorded still has its hash (exports older than the hash record:
  skipped, "no hash recorded"); a recorded file that is gone fails;
- `config vs weights`: config.json builds the model whose parameter names and shapes model.safetensors holds;
- `onnx parity`: model.onnx against the safetensors model on fresh random inputs, onnxruntime CPU, with the
  export's own tolerance (`ort_parity.check_onnx_parity`, the export's parity step);
- every other .onnx of the folder: the fp16/int8 twins against the safetensors model with a looser tolerance
  (max abs diff <= 5e-2 and top-1 agreement); the no-LoRA `baseline/model.onnx` only loads and runs (its
  torch twin is not shipped);
- every TensorRT engine (`*.plan`): against model.onnx when TensorRT is present, else skipped;
- `zero-overhead structure`: model.onnx vs baseline/model.onnx (`overhead.structural_compare`);
- per certificate (`certificate.json`, `certificate_fp16.json`, ...; `taslora_deploy.certificate.check`):
  `certificate <file>` (it reads back, its digest matches its content and the ONNX file's metadata_props),
  `certificate structure <file>` (facts recomputed from the shipped files have the certified digests) and
  `certificate parity <file>` (the artifact on the certificate's probe batch against the run-time MoLE logits
  recorded there); exports older than certificates: skipped;
- with `latency=True`: `latency here`, the equivalence test re-run on this machine next to the certified verdict
  (different fails; inconclusive is skipped with the reason).

A check whose input file failed its hash check is skipped (the hash row names the cause).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taslora_core.artifact_read import read_json_artifact
from taslora_core.integrity import EXPORT_HASHES_KEY, file_sha256
from taslora_deploy.artifacts import (BASELINE_DIR, BASELINE_ONNX, MODEL_CONFIG, MODEL_FP16_PLAN, MODEL_INT8_ONNX,
                                      MODEL_INT8_PLAN, MODEL_ONNX, MODEL_WEIGHTS, REPORT)
from taslora_deploy.certificate.document import FP16_MAX_ABS

__all__ = ["VerifyCheck", "VerifyResult", "verify", "PASS", "FAIL", "SKIPPED", "TWIN_TOLERANCE"]

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
TWIN_TOLERANCE = FP16_MAX_ABS  # fp16 twins: max abs logit diff against the fp32 safetensors model
DEFAULT_ONNX_TOLERANCE = 1e-4  # the export's default (ExportOptions.onnx_tolerance) when report.json lacks it


@dataclass(frozen=True)
class VerifyCheck:
    """One row of the verdict."""

    name: str
    status: str  # PASS, FAIL or SKIPPED
    detail: str = ""


@dataclass
class VerifyResult:
    """Every check of one export folder; `ok` when none failed (skipped checks do not fail)."""

    export_dir: Path
    checks: list[VerifyCheck] = field(default_factory=list)
    seed: int = 0
    certified_latency: dict[str, Any] | None = None  # the certificate's latency section (with latency=True)
    latency: dict[str, Any] | None = None  # the equivalence test re-run here (with latency=True)

    @property
    def ok(self) -> bool:
        """No check failed."""
        return not self.failures

    @property
    def failures(self) -> list[VerifyCheck]:
        """The failed checks, in order."""
        return [c for c in self.checks if c.status == FAIL]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if text else type(err).__name__


class _Checks:
    """Runs checks into a list, turning an exception into a failed row."""

    def __init__(self) -> None:
        self.rows: list[VerifyCheck] = []
        self.bad_files: set[str] = set()

    def add(self, name: str, status: str, detail: str = "") -> None:
        self.rows.append(VerifyCheck(name, status, detail))

    def run(self, name: str, needs: tuple[str, ...], fn: Callable[[], str]) -> None:
        """Run `fn` (-> detail of a pass) unless one of the files it `needs` failed its hash check."""
        bad = [n for n in needs if n in self.bad_files]
        if bad:
            self.add(name, SKIPPED, f"{', '.join(bad)} failed its sha256 check")
            return
        try:
            self.add(name, PASS, fn())
        except _Skip as skip:
            self.add(name, SKIPPED, str(skip))
        except Exception as err:  # noqa: BLE001 - every failure is a row of the verdict
            self.add(name, FAIL, _one_line(err))


class _Skip(Exception):
    """A check that does not apply to this folder (the message says why)."""


def _check_hashes(directory: Path, record: dict[str, Any], checks: _Checks) -> None:
    recorded = record.get(EXPORT_HASHES_KEY)
    if not isinstance(recorded, dict) or not recorded:
        checks.add("sha256", SKIPPED, f"no hash recorded in {directory / REPORT} (exported before hashes were recorded)")
        return
    for rel, want in sorted(recorded.items()):
        path = directory / rel
        if not path.is_file():
            checks.bad_files.add(rel)
            checks.add(f"sha256 {rel}", FAIL, f"{path} is missing; restore the shipped folder or re-export")
        elif file_sha256(path) != want:
            checks.bad_files.add(rel)
            checks.add(f"sha256 {rel}", FAIL, f"{path} was modified since the export recorded its sha256 in "
                                             f"{directory / REPORT}; restore it or re-export")
        else:
            checks.add(f"sha256 {rel}", PASS, want[:16])


def _onnx_files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.onnx") if not p.name.startswith("."))


def verify(export_dir: str | os.PathLike, seed: int | None = None, onnx_tolerance: float | None = None,
           latency: bool = False, latency_config: Any = None, threads: int | None = None,
           log: Callable[[str], None] = print) -> VerifyResult:
    """Re-check the export folder `export_dir` (see the module docstring) and return the verdict.

    ``seed``: of the random inputs (default: fresh from the OS, recorded in the result). ``onnx_tolerance``:
    of model.onnx against the safetensors model (default: the tolerance the export used). ``latency``: also re-run
    the latency equivalence test of certificate.json's artifact here (``latency_config``: a
    :class:`~taslora_deploy.certificate.latency.LatencyTestConfig`; onnxruntime CPU, ``threads``)."""
    directory = Path(export_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"export folder {directory} does not exist; pass a folder written by `taslora export`")
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else int(seed)
    result = VerifyResult(directory, seed=seed)
    checks = _Checks()
    fix = "re-export with `taslora export`"
    try:
        record = read_json_artifact(directory / REPORT, "export record", fix)
    except ValueError as err:
        checks.add("record", FAIL, _one_line(err))
        record = None
    if record is not None:
        checks.add("record", PASS, str(directory / REPORT))
        _check_hashes(directory, record, checks)

    state: dict[str, Any] = {}

    def config_vs_weights() -> str:
        from taslora_deploy.standalone.io import load_standalone

        state["model"] = model = load_standalone(directory)
        return f"{sum(p.numel() for p in model.parameters())} parameters, input {tuple(model.input_shape)}"

    checks.run("config vs weights", (MODEL_CONFIG, MODEL_WEIGHTS), config_vs_weights)
    model = state.get("model")
    tolerance = onnx_tolerance if onnx_tolerance is not None else _recorded_tolerance(record)
    onnx_files = _onnx_files(directory)
    if MODEL_ONNX not in onnx_files:
        checks.add("onnx parity", SKIPPED, f"no {MODEL_ONNX} in {directory} (exported without --onnx)")
    for rel in onnx_files:
        checks.run(_onnx_check_name(rel), (rel, MODEL_CONFIG, MODEL_WEIGHTS),
                   lambda rel=rel: _check_onnx(directory / rel, rel, model, tolerance, seed))
    plans = sorted(directory.glob("*.plan"))
    for plan in plans:
        checks.run(f"engine {plan.name}", (plan.name, MODEL_ONNX), lambda plan=plan: _check_engine(plan, directory, model, seed))
    if not plans:
        checks.run("engine", (), lambda: _check_engine(None, directory, model, seed))
    if MODEL_ONNX in onnx_files:
        checks.run("zero-overhead structure", (MODEL_ONNX, BASELINE_ONNX), lambda: _check_structure(directory))
    _check_certificates(directory, checks, result, latency, latency_config, threads, log)
    result.checks = checks.rows
    return result


def _check_certificates(directory: Path, checks: _Checks, result: VerifyResult, latency: bool, config: Any,
                        threads: int | None, log: Callable[[str], None]) -> None:
    """The certificate rows of the module docstring."""
    from taslora_deploy.certificate.check import (certificate_files, open_certificate, recheck_parity,
                                                  recheck_structure, rerun_latency)

    names = certificate_files(directory)
    if not names:
        checks.add("certificate", SKIPPED, f"no certificate.json in {directory} (exported before certificates)")
    docs: dict[str, dict[str, Any]] = {}

    def opened(name: str) -> str:
        docs[name], detail = open_certificate(directory, name)
        return detail

    for name in names:
        checks.run(f"certificate {name}", (name,), lambda name=name: opened(name))
        doc = docs.get(name)
        if doc is None:
            continue
        files = (name, doc["artifact"], *((doc["baseline"],) if doc["baseline"].startswith(BASELINE_DIR) else ()))
        checks.run(f"certificate structure {name}", files, lambda doc=doc: recheck_structure(directory, doc))
        checks.run(f"certificate parity {name}", files[:2], lambda doc=doc: recheck_parity(directory, doc, threads))
    main = docs.get(names[0]) if names else None
    if latency:
        checks.run("latency here", tuple(names[:1]), lambda: _latency_here(directory, main, result, config,
                                                                                     threads, log, rerun_latency))


def _latency_here(directory: Path, doc: dict[str, Any] | None, result: VerifyResult, config: Any,
                  threads: int | None, log: Callable[[str], None], rerun: Callable[..., dict[str, Any]]) -> str:
    from taslora_deploy.certificate.equivalence import DIFFERENT, INCONCLUSIVE
    from taslora_deploy.certificate.latency import RECHECK_TEST

    if doc is None or not str(doc["baseline"]).startswith(BASELINE_DIR):
        raise _Skip("needs certificate.json of an ONNX export (its artifact and baseline/ twin) to re-time")
    result.certified_latency = doc.get("latency")
    result.latency = here = rerun(directory, doc, doc["artifact"], doc["baseline"], config or RECHECK_TEST,
                                  threads=threads, log=log)
    at_export = (doc.get("latency") or {}).get("verdict", "not measured")
    line = f"here: {here['verdict']}; at export: {at_export}"
    if here["verdict"] == DIFFERENT:
        raise ValueError(f"latency of {doc['artifact']} vs {doc['baseline']} is different on this machine ({line})")
    if here["verdict"] == INCONCLUSIVE:
        raise _Skip(f"{line}: too noisy here to decide; re-run on a quiet machine")
    return line


def _recorded_tolerance(record: dict[str, Any] | None) -> float:
    parity = ((record or {}).get("onnx") or {}).get("parity") if isinstance((record or {}).get("onnx"), dict) else None
    atol = parity.get("atol") if isinstance(parity, dict) else None
    return float(atol) if isinstance(atol, (int, float)) else DEFAULT_ONNX_TOLERANCE


def _onnx_check_name(rel: str) -> str:
    return "onnx parity" if rel == MODEL_ONNX else f"onnx {rel}"


def _check_onnx(path: Path, rel: str, model: Any, tolerance: float, seed: int) -> str:
    from taslora_deploy.ort_parity import check_onnx_parity

    if model is None:
        raise _Skip(f"needs the safetensors model ({MODEL_CONFIG} + {MODEL_WEIGHTS}), which did not load")
    shape = tuple(model.input_shape)
    if rel == MODEL_ONNX:
        rep = check_onnx_parity(model, path, shape, batch_sizes=(1, 7), atol=tolerance, seed=seed)
        return f"max abs diff {rep['max_abs_diff']:.2e} <= {tolerance:g} on fresh random inputs (seed {seed})"
    if rel.startswith(f"{BASELINE_DIR}/"):  # the no-LoRA twins: their torch model is not shipped
        return _runs(path, shape, seed)
    if rel == MODEL_INT8_ONNX:  # int8 logits move by ~0.1-1 on random inputs: the export's test-split gate is its check
        _runs(path, shape, seed)
        return "loads and runs on onnxruntime CPU; int8 accuracy was gated against fp32 at export (report.json onnx_int8.gate)"
    rep = check_onnx_parity(model, path, shape, batch_sizes=(1, 7), atol=TWIN_TOLERANCE, seed=seed)
    if rep.get("top1_agreement") is not None and rep["top1_agreement"] < 0.99:
        raise ValueError(f"{path}: top-1 agreement {rep['top1_agreement']:.3f} with the fp32 model is below 0.99")
    return (f"reduced-precision twin: max abs diff {rep['max_abs_diff']:.2e} <= {TWIN_TOLERANCE:g}, "
            f"top-1 agreement {rep['top1_agreement']}")


def _runs(path: Path, shape: tuple[int, ...], seed: int) -> str:
    """The file loads in onnxruntime CPU and gives finite outputs of one row per image."""
    import numpy as np

    from taslora_deploy.onnx_graph import onnx_input_info
    from taslora_deploy.ort_parity import ort_session

    name, _, np_dtype = onnx_input_info(path)
    sess = ort_session(path, device="cpu")
    x = np.random.default_rng(seed).standard_normal((3, *shape)).astype(np_dtype)
    out = sess.run(None, {name: x})[0]
    if out.shape[0] != 3 or not np.isfinite(out).all():
        raise ValueError(f"{path} gives output of shape {out.shape} (finite: {bool(np.isfinite(out).all())}) for 3 images")
    return "loads and runs on onnxruntime CPU (not compared: the no-LoRA model is shipped only as ONNX)"


def _check_engine(plan: Path | None, directory: Path, model: Any, seed: int) -> str:
    from taslora_deploy.trt_engine import compare_trt_to_ort, tensorrt_status

    ok, reason = tensorrt_status()
    if not ok:
        raise _Skip(f"TensorRT not installed or no CUDA device ({reason.splitlines()[0] if reason else 'unavailable'})")
    if plan is None:
        raise _Skip(f"no TensorRT engine (*.plan) in {directory} (exported without --trt)")
    if model is None or not (directory / MODEL_ONNX).is_file():
        raise _Skip(f"needs {MODEL_ONNX} and the safetensors model to compare against")
    if plan.name == MODEL_INT8_PLAN:  # as for model_int8.onnx: random inputs say little about int8 ranges
        import torch

        from taslora_deploy.trt_engine import TrtRunner

        TrtRunner(plan)(torch.zeros((1, *model.input_shape)))
        return "loads and runs; int8 accuracy was gated against fp32 at export (report.json tensorrt_int8.gate)"
    rep = compare_trt_to_ort(plan, directory / MODEL_ONNX, tuple(model.input_shape), fp16=plan.name == MODEL_FP16_PLAN,
                             seed=seed)
    return f"matches {MODEL_ONNX} on onnxruntime ({', '.join(f'{k} {v}' for k, v in rep.items() if 'diff' in k)})"


def _check_structure(directory: Path) -> str:
    from taslora_deploy.overhead import structural_compare

    if not (directory / BASELINE_ONNX).is_file():
        raise _Skip(f"no {BASELINE_ONNX} to compare with")
    rep = structural_compare(directory / MODEL_ONNX, directory / BASELINE_ONNX)
    if not rep["equal"]:
        raise ValueError(f"{directory / MODEL_ONNX} differs structurally from {directory / BASELINE_ONNX}: "
                         + "; ".join(rep["differences"]))
    return (f"same ops, parameter shapes and I/O as {BASELINE_ONNX} ({rep['params_a']} float initializer elements: "
            "weights and folded constants)")
