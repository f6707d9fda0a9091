"""The export's certificate steps: zero-overhead structure and latency, what folding saves, one certificate per artifact.

Run by :func:`taslora_deploy.pipeline.run_export` after the ONNX and precision steps:

- ``zero_overhead_structure``: the main artifact (``model.onnx``; ``model.safetensors`` without --onnx) against the
  same subnet without LoRA (:mod:`taslora_deploy.certificate.structure`); fails when they differ;
- ``zero_overhead_latency``: the latency test (:mod:`taslora_deploy.certificate.latency`); fails only when the
  verdict is *different* (the folded model slower beyond the margin) and ``--latency-check strict``;
  *inconclusive* is a warning with the command to re-run; a folded model measured *faster* passes with a note;
- ``unmerged_vs_folded``: the folded model against the MoLE model with router and LoRA branches at run time;
- ``certificate``: ``certificate.json`` for the main artifact and ``certificate_<p>.json`` for every precision twin
  (structure against the no-LoRA twin made the same way, parity against the run-time MoLE model at the twin's
  precision, latency), each ONNX file stamped with its certificate (metadata_props) and the list added to
  config.json. It fails on evidence the earlier steps did not already report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taslora_core.atomic import atomic_write_json
from taslora_core.complexity import flops
from taslora_deploy.artifacts import (MODEL_CONFIG, MODEL_ONNX, MODEL_WEIGHTS, PRECISION_CERTIFICATE, PRECISION_ONNX,
                                      baseline_twin)
from taslora_deploy.certificate.document import (FAILED, PROBE_BATCH, build_certificate, metadata_props,
                                                 parity_record, precision_tolerance, probe_inputs, reason_lines,
                                                 write_certificate)
from taslora_deploy.certificate.equivalence import DIFFERENT, EQUIVALENT, INCONCLUSIVE

__all__ = ["CertificateInputs", "certificate_steps", "latency_legacy_keys"]

LEGACY_KEYS = ("ratio_median", "ratio_p10", "ratio_p90", "ratio_iqr", "ratio_of_medians", "median_a_ms", "median_b_ms")


@dataclass
class CertificateInputs:
    """What the certificate steps need from the export: the two models, the run-time reference, the images."""

    out: Path
    space: Any
    subnet: Any
    model: torch.nn.Module  # folded standalone ViT
    baseline: torch.nn.Module  # the same subnet without LoRA
    reference: Callable[[torch.Tensor], torch.Tensor]  # the run-time MoLE model (supernet + routed experts)
    real_images: torch.Tensor | None
    model_meta: dict[str, Any]  # subnet, space, FLOPs, params, source hashes (goes into every certificate)
    unmerged: Callable[[], torch.nn.Module] | None = None  # the run-time MoLE model as a module (None: no experts)


def latency_legacy_keys(latency: dict[str, Any]) -> dict[str, Any]:
    """The flat keys older readers of report.json use (quickstart, `taslora runs`), from the largest batch."""
    batches = latency.get("batches") or {}
    if not batches:
        return {}
    primary = max(batches, key=int)
    res = batches[primary]
    return {"batch": int(primary), **{k: res[k] for k in LEGACY_KEYS if k in res},
            "within_tolerance": latency.get("verdict") == EQUIVALENT}


def _main_artifact(steps: Any, out: Path, options: Any) -> tuple[str, str, str | None] | None:
    """(kind, artifact, baseline) of the fp32 artifact to certify: the ONNX pair when both files passed their
    steps, else the safetensors model (compared with the in-memory no-LoRA model); None when neither exists."""
    ok = lambda step: bool((steps.data.get(step) or {}).get("ok"))  # noqa: E731
    if options.onnx and ok("onnx") and ok("onnx_baseline"):
        return "onnx", MODEL_ONNX, baseline_twin(out, "fp32").relative_to(out).as_posix()
    return ("torch", MODEL_WEIGHTS, None) if ok("standalone") else None


def _structure(inp: CertificateInputs, kind: str, artifact: str, baseline: str | None) -> dict[str, Any]:
    from taslora_deploy.certificate.structure import compare_structures, onnx_structure, torch_structure

    f = flops(inp.space, inp.subnet, "macs")
    if kind == "onnx":
        art, base = onnx_structure(inp.out / artifact, f), onnx_structure(inp.out / baseline, f)
    else:
        shape = inp.model.input_shape
        art, base = torch_structure(inp.model, shape, f, path=artifact), torch_structure(inp.baseline, shape, f)
    return {**compare_structures(art, base, names=("folded", "no-LoRA")), "artifact": art, "baseline": base}


def _latency(inp: CertificateInputs, runtime: str, pair: tuple[Any, Any], options: Any,
             log: Callable[[str], None]) -> dict[str, Any]:
    """The equivalence test of (baseline, folded) artifacts on ``runtime``."""
    from taslora_deploy.certificate.latency import latency_certificate
    from taslora_deploy.runners import runtime_device, runtime_runner

    shape = inp.model.input_shape

    def make_pair(batch: int):
        return tuple(runtime_runner(runtime, art, batch, shape, threads=options.threads, seed=options.seed)
                     for art in pair)

    device = runtime_device(runtime)
    return latency_certificate(make_pair, options.latency_config(), runtime, threads=options.threads, device=device,
                               events=device == "cuda", log=log)


def _rerun_hint(out: Path) -> str:
    return f"re-run on a quiet machine: taslora check-overhead {out}"


def certificate_steps(steps: Any, inp: CertificateInputs, options: Any, log: Callable[[str], None]) -> None:
    """Run the four steps of the module docstring into the export's step recorder."""
    main = _main_artifact(steps, inp.out, options)
    if main is None:
        return
    kind, artifact, baseline = main
    structure = steps.run("zero_overhead_structure", lambda: _structure(inp, kind, artifact, baseline))
    if structure is not None:
        record = {**structure, "artifact_file": artifact, "equal": structure["identical"],
                  "params_folded": structure["artifact"]["params"], "params_baseline": structure["baseline"]["params"],
                  "ok": structure["identical"]}
        if not structure["identical"]:
            steps.reject("zero_overhead_structure", record, f"{artifact} differs structurally from the no-LoRA "
                         f"subnet: {'; '.join(structure['differences'])}")
        else:
            steps.record("zero_overhead_structure", record)
    latency = None
    if options.overhead and options.latency_mode != "off":
        runtime = options.latency_runtime or ("ort-cpu" if kind == "onnx" else "torch-cpu")
        pair = (inp.baseline, inp.model) if runtime.startswith("torch") else (inp.out / baseline, inp.out / artifact) \
            if kind == "onnx" else None
        if pair is None:
            steps.fail("zero_overhead_latency", ValueError(f"--latency-runtime {runtime} needs --onnx"))
        else:
            latency = steps.run("zero_overhead_latency", lambda: _latency(inp, runtime, pair, options, log))
            if latency is not None:
                _judge_latency(steps, latency, options, inp.out, log)
    if options.overhead and inp.unmerged is not None:
        _unmerged_step(steps, inp, options, log)
    _certificates(steps, inp, main, structure, latency, options, log)


def _judge_latency(steps: Any, latency: dict[str, Any], options: Any, out: Path, log: Callable[[str], None]) -> None:
    from taslora_deploy.certificate.latency import verdict_line

    record = {**latency, **latency_legacy_keys(latency), "mode": options.latency_mode, "ok": True}
    lines = "; ".join(f"batch {b}: {verdict_line(r)}" for b, r in latency["batches"].items())
    if latency["verdict"] == DIFFERENT and options.latency_mode == "strict":
        steps.reject("zero_overhead_latency", {**record, "ok": False},
                     f"folded/baseline latency is different ({lines}); the folded model is slower than the "
                     f"same subnet without LoRA beyond the {100 * options.latency_margin:g}% margin")
        return
    steps.record("zero_overhead_latency", record)
    for b, r in latency["batches"].items():
        if r.get("note"):
            log(f"note: batch {b}: {r['note']}")
    if latency["verdict"] == DIFFERENT:
        log(f"warning: folded/baseline latency is different ({lines}); recorded only (--latency-check report)")
    elif latency["verdict"] == INCONCLUSIVE:
        log(f"warning: folded/baseline latency is inconclusive: this machine was too noisy to decide within "
            f"{options.latency_time_s:g} s per batch size ({lines}); {_rerun_hint(out)}")


def _unmerged_step(steps: Any, inp: CertificateInputs, options: Any, log: Callable[[str], None]) -> None:
    from taslora_deploy.runners import torch_runner
    from taslora_deploy.timing import interleaved_latency

    def unmerged() -> dict[str, Any]:
        b, shape = options.latency_batch, inp.model.input_shape
        um = inp.unmerged()
        res = interleaved_latency(torch_runner(inp.model, b, shape, seed=options.seed),
                                  torch_runner(um, b, shape, seed=options.seed), warmup_s=options.latency_warmup_s,
                                  iters=max(50, options.latency_iters // 3))
        return {"runtime": "torch-eager-cpu", "batch": b, "a": "folded",
                "b": "unmerged MoLE (router + LoRA branches at run time)", **res,
                "params_unmerged": sum(p.numel() for p in um.parameters()), "ok": True}

    saved = steps.run("unmerged_vs_folded", unmerged)
    if saved is not None:
        log(f"unmerged MoLE / folded latency (torch eager, batch {options.latency_batch}): {saved['ratio_median']:.3f}x")


# --------------------------------------------------------------------------- certificates


def _outputs(kind: str, target: Any, inputs: dict[str, np.ndarray], threads: int | None) -> dict[str, np.ndarray]:
    """The artifact's logits on every input set (onnxruntime CPU for ONNX files, the module for torch)."""
    if kind == "torch":
        with torch.no_grad():
            return {k: target(torch.from_numpy(x)).double().numpy() for k, x in inputs.items()}
    from taslora_deploy.onnx_graph import onnx_input_info
    from taslora_deploy.ort_parity import ort_session

    name, _, np_dtype = onnx_input_info(target)
    sess = ort_session(target, device="cpu", threads=threads)
    return {k: sess.run(None, {name: x.astype(np_dtype)})[0].astype(np.float64) for k, x in inputs.items()}


def _artifacts(steps: Any, main: tuple[str, str, str | None], out: Path, options: Any) -> list[tuple[str, str, str, str | None]]:
    """(precision, kind, artifact, baseline) of everything to certify: the main artifact, then every twin whose
    step passed and whose no-LoRA twin exists."""
    kind, artifact, baseline = main
    found = [("fp32", kind, artifact, baseline)]
    for p in ("fp16", "int8"):
        if p in options.precisions and (steps.data.get(f"onnx_{p}") or {}).get("ok") and baseline_twin(out, p).is_file():
            found.append((p, "onnx", PRECISION_ONNX[p], baseline_twin(out, p).relative_to(out).as_posix()))
    return found


def _certificates(steps: Any, inp: CertificateInputs, main: tuple[str, str, str | None], fp32_structure: dict | None,
                  fp32_latency: dict | None, options: Any, log: Callable[[str], None]) -> None:
    shape = tuple(inp.model.input_shape)
    inputs = {"probe": probe_inputs(options.seed, PROBE_BATCH, shape)}
    if inp.real_images is not None:
        inputs["real"] = inp.real_images.float().cpu().numpy()
    probe = {"seed": options.seed, "batch": PROBE_BATCH, "shape": list(shape), "formula": "certificate.probe_inputs"}
    measuring = options.overhead and options.latency_mode != "off"
    fp32_tol = options.parity_tolerance + (options.onnx_tolerance if main[0] == "onnx" else 0.0)
    summary: dict[str, dict[str, Any]] = {}
    counted: list[str] = []

    def make_all() -> None:
        with torch.no_grad():
            refs = {k: inp.reference(torch.from_numpy(x)).double().numpy() for k, x in inputs.items()}
        for precision, kind, artifact, baseline in _artifacts(steps, main, inp.out, options):
            name = PRECISION_CERTIFICATE[precision]
            if precision == "fp32":
                structure = fp32_structure or {"identical": False, "differences": [
                    f"not compared: {steps.failures.get('zero_overhead_structure', 'the structure step did not run')}"]}
                latency = fp32_latency if measuring else None
            else:
                structure = _structure(inp, "onnx", artifact, baseline)
                runtime = options.latency_runtime if (options.latency_runtime or "").startswith("ort") else "ort-cpu"
                latency = _latency(inp, runtime, (inp.out / baseline, inp.out / artifact), options, log) if measuring else None
            target = inp.model if kind == "torch" else inp.out / artifact
            parity = parity_record(_outputs(kind, target, inputs, options.threads), refs,
                                   precision_tolerance(precision, fp32_tol), probe)
            doc = build_certificate(file=name, artifact=artifact, baseline=baseline or "in-memory no-LoRA model",
                                    precision=precision, model=inp.model_meta, structure=structure, parity=parity,
                                    latency=latency)
            write_certificate(inp.out / name, doc)
            if kind == "onnx":
                from taslora_deploy.onnx_export import stamp_metadata

                stamp_metadata(inp.out / artifact, metadata_props(doc))
            lines = reason_lines(doc["reasons"])
            summary[precision] = {"file": name, "artifact": artifact, "verdict": doc["verdict"], "digest": doc["digest"],
                                  "reasons": lines}
            log(f"wrote {inp.out / name}: {doc['verdict']}" + (f" ({'; '.join(lines)})" if lines else ""))
            counted.extend(f"{name}: {r}" for r in _counted(precision, doc, options))
        _add_to_config(inp.out, summary)

    try:
        make_all()
    except Exception as err:  # noqa: BLE001 - recorded like every step's failure; later steps still run
        steps.fail("certificate", err)
        return
    record = {"certificates": summary, "ok": not counted}
    if counted:
        steps.reject("certificate", record, "; ".join(counted))
    else:
        steps.record("certificate", record)


def _counted(precision: str, doc: dict[str, Any], options: Any) -> list[str]:
    """The reasons of a failed certificate that fail the export here: parity always; structure and latency of the
    twins (the fp32 ones fail their own steps); latency only under --latency-check strict."""
    if doc["verdict"] != FAILED:
        return []
    counted = [r for r in doc["reasons"] if r["kind"] == "parity" or (precision != "fp32" and (
        r["kind"] == "structure" or (r["kind"] == "latency" and options.latency_mode == "strict")))]
    return reason_lines(counted)


def _add_to_config(out: Path, summary: dict[str, dict[str, Any]]) -> None:
    """config.json (the folder's model and engine config) names its certificates and their verdicts."""
    path = out / MODEL_CONFIG
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config["certificates"] = {p: {k: v for k, v in s.items() if k != "reasons"} for p, s in summary.items()}
    atomic_write_json(path, config)

