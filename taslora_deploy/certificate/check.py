"""Re-checking a shipped export against its certificates (what `taslora verify` and `taslora check-overhead` run).

- :func:`open_certificate`: the certificate reads back (format, own digest, the export record's sha256), its
  artifact exists and an ONNX artifact carries the same digest and verdict in its metadata_props;
- :func:`recheck_structure`: the structure facts recomputed from the shipped files have the recorded digests and
  the artifact is still identical to its no-LoRA twin (a torch artifact, whose no-LoRA model is not shipped, is
  compared with the recorded facts; its aten operator list is left out, as it depends on the torch version);
- :func:`recheck_parity`: the artifact run on the certificate's probe batch is as close to the run-time MoLE
  logits recorded there as the certificate allows;
- :func:`rerun_latency`: the equivalence test again, on this machine; :func:`latency_side_by_side` pairs its verdict
  per batch size with the certificate's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from taslora_deploy.artifacts import MODEL_CONFIG, MODEL_WEIGHTS, PRECISION_CERTIFICATE
from taslora_deploy.certificate.document import METADATA_PREFIX, Tolerance, probe_inputs, read_certificate

__all__ = ["certificate_files", "open_certificate", "recheck_structure", "recheck_parity", "rerun_latency",
           "latency_side_by_side"]

_TORCH_STABLE_FACTS = ("initializers", "io", "params", "param_shapes", "stored_params", "graph_macs", "flops_macs")


def certificate_files(directory: str | Path) -> list[str]:
    """The certificate files of an export folder, fp32 first."""
    return [name for name in PRECISION_CERTIFICATE.values() if (Path(directory) / name).is_file()]


def open_certificate(directory: Path, name: str) -> tuple[dict[str, Any], str]:
    """(certificate, one-line detail) after the checks of the module docstring; ValueError naming what is wrong."""
    doc = read_certificate(directory / name)
    artifact = directory / doc["artifact"]
    if not artifact.is_file():
        raise ValueError(f"{artifact}, certified by {directory / name}, is missing; restore the shipped folder")
    if artifact.suffix == ".onnx":
        from taslora_deploy.onnx_graph import onnx_metadata

        meta = onnx_metadata(artifact)
        stamped = meta.get(f"{METADATA_PREFIX}certificate.digest")
        if stamped != doc["digest"] or meta.get(f"{METADATA_PREFIX}certificate.verdict") != doc["verdict"]:
            raise ValueError(f"{artifact} carries certificate digest {str(stamped)[:12]}... in its metadata_props, "
                             f"not {doc['digest'][:12]}... of {directory / name}: they do not belong together")
    return doc, f"{doc['verdict']} ({doc['precision']} {doc['artifact']}, digest {doc['digest'][:12]})"


def recheck_structure(directory: Path, doc: dict[str, Any]) -> str:
    """Recompute the structure facts and compare them with the certificate's; ValueError listing every mismatch."""
    from taslora_deploy.certificate.structure import compare_structures, onnx_structure, torch_structure

    recorded = doc.get("structure") or {}
    art_rec, base_rec = recorded.get("artifact"), recorded.get("baseline")
    if not art_rec or not base_rec:
        raise ValueError(f"{directory / doc['file']} records no structure facts (the structure step failed at export)")
    problems: list[str] = []
    if art_rec["kind"] == "onnx":
        art = onnx_structure(directory / doc["artifact"], art_rec.get("flops_macs"))
        base = onnx_structure(directory / doc["baseline"], base_rec.get("flops_macs"))
        problems += [f"{directory / rel} has structure digest {now['digest'][:12]}..., certified {rec['digest'][:12]}..."
                     for rel, now, rec in ((doc["artifact"], art, art_rec), (doc["baseline"], base, base_rec))
                     if now["digest"] != rec["digest"]]
    else:
        from taslora_deploy.standalone.io import load_standalone

        model = load_standalone(directory)
        art = torch_structure(model, model.input_shape, art_rec.get("flops_macs"), path=MODEL_WEIGHTS)
        problems += [f"{directory / MODEL_WEIGHTS}: {key} differs from the certificate"
                     for key in _TORCH_STABLE_FACTS if art.get(key) != art_rec.get(key)]
        # the no-LoRA torch model is not shipped: compare with its recorded facts; the aten operator list depends
        # on the torch version, so the recorded one stands in for the recomputed one
        art["ops"], base = base_rec["ops"], base_rec
    now = compare_structures(art, base, names=("folded", "no-LoRA"))
    if not now["identical"]:
        problems.append("differs from the no-LoRA subnet: " + "; ".join(now["differences"]))
    if problems:
        raise ValueError("; ".join(problems))
    return (f"same facts as certified (digest {art_rec['digest'][:12]}); identical to the no-LoRA subnet: "
            f"{sum(art['ops'].values())} operators, {art['params']} parameters, {art['graph_macs']} MACs per image")


def _artifact_outputs(directory: Path, doc: dict[str, Any], x: np.ndarray, threads: int | None) -> np.ndarray:
    path = directory / doc["artifact"]
    if path.suffix == ".onnx":
        from taslora_deploy.onnx_graph import onnx_input_info
        from taslora_deploy.ort_parity import ort_session

        name, _, np_dtype = onnx_input_info(path)
        return ort_session(path, device="cpu", threads=threads).run(None, {name: x.astype(np_dtype)})[0]
    import torch

    from taslora_deploy.standalone.io import load_standalone

    with torch.no_grad():
        return load_standalone(directory)(torch.from_numpy(x)).numpy()


def recheck_parity(directory: Path, doc: dict[str, Any], threads: int | None = None) -> str:
    """The artifact on the probe batch against the recorded run-time MoLE logits: within the certificate's
    tolerance, or no worse than at export (0.1% slack for other CPUs' kernels); ValueError otherwise."""
    parity = doc.get("parity") or {}
    probe = parity.get("probe")
    if not probe:
        raise ValueError(f"{directory / doc['file']} records no probe batch to re-check parity on")
    x = probe_inputs(probe["seed"], probe["batch"], tuple(probe["shape"]))
    ref = np.asarray(probe["reference_logits"], dtype=np.float64)
    got = np.asarray(_artifact_outputs(directory, doc, x, threads), dtype=np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"{directory / doc['artifact']} gives outputs of shape {got.shape} on the probe, the "
                         f"certificate recorded {ref.shape}")
    tol = Tolerance(**parity["tolerance"])
    diff = float(np.abs(got - ref).max())
    value = diff if tol.metric == "max_abs_diff" else diff / (float(np.abs(ref).max()) or 1.0)
    at_export = float((parity.get("inputs") or {}).get("probe", {}).get(tol.metric, 0.0))
    allowed = max(tol.value, at_export) * 1.001 + 1e-7
    if not value <= allowed:
        raise ValueError(f"{directory / doc['artifact']}: {tol.metric} {value:.3g} against the run-time MoLE logits "
                         f"recorded in {doc['file']} exceeds {allowed:.3g} (at export {at_export:.3g})")
    return (f"probe ({probe['batch']} images): {tol.metric} {value:.2e} <= {allowed:.2e} against the run-time MoLE "
            f"logits recorded at export ({at_export:.2e} then)")


def rerun_latency(directory: Path, doc: dict[str, Any] | None, artifact: str, baseline: str, config: Any,
                  runtime: str = "ort-cpu", threads: int | None = None, plans: tuple[Any, Any] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """The equivalence test of (baseline, artifact) on this machine (TensorRT: ``plans`` = (baseline, folded)
    engines or plan paths). ``doc`` (the certificate, or None) is unused but for the input shape fallback."""
    from taslora_core.artifact_read import read_json_artifact
    from taslora_deploy.certificate.latency import latency_certificate
    from taslora_deploy.runners import runtime_device, runtime_runner

    shape = None
    if (directory / MODEL_CONFIG).is_file():
        shape = tuple(read_json_artifact(directory / MODEL_CONFIG, "model config", "re-export it").get("input_shape", ())) or None
    if shape is None and doc is not None:
        shape = tuple((doc.get("parity") or {}).get("probe", {}).get("shape", ())) or None
    pair = plans if runtime.startswith("trt") else (directory / baseline, directory / artifact)
    if pair is None:
        raise ValueError(f"runtime {runtime} needs the baseline and folded TensorRT engines")

    def make_pair(batch: int):
        return tuple(runtime_runner(runtime, art, batch, shape, threads=threads, seed=config.seed) for art in pair)

    device = runtime_device(runtime)
    return latency_certificate(make_pair, config, runtime, threads=threads, device=device, events=device == "cuda",
                               log=log)


def latency_side_by_side(certified: dict[str, Any] | None, here: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(batch, at export, here) per batch size: verdict, B/A and CI of each (at export: "-" when not measured)."""
    def cell(res: dict[str, Any] | None) -> str:
        if not res:
            return "-"
        lo, hi = res["ratio_ci"]
        faster = "; faster, not overhead" if res.get("direction") == "faster" else ""
        return f"{res['verdict']}: B/A {res['ratio']:.4f} (CI {lo:.4f}..{hi:.4f}, {res['pairs']} pairs{faster})"

    before = (certified or {}).get("batches") or {}
    rows = [(b, cell(before.get(b)), cell(res)) for b, res in here["batches"].items()]
    rows.append(("all", (certified or {}).get("verdict", "not measured"), here["verdict"]))
    return rows
