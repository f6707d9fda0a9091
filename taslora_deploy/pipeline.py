"""`taslora export`: fold -> parity -> safetensors -> ONNX -> twins -> certificates -> TensorRT, in one folder.

:func:`export` is the library verb: it resolves the subnet and checkpoint (defaults from the workspace), opens
an ``exports/`` run folder, runs the steps (:func:`run_export`) and returns an :class:`ExportResult`.

Each step records its outcome in `report.json` (rewritten atomically after every step), so a failure keeps
every artifact and result that came before it. Steps that fail are reported and make the run fail at the
end; TensorRT runs last, so without it everything else is still written.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from taslora_core.artifact_read import read_json_artifact
from taslora_core.atomic import atomic_write_json
from taslora_core.integrity import EXPORT_HASHES_KEY, EXPORT_NOT_WRITTEN_KEY, file_stamps, tree_hashes, written_since
from taslora_core.complexity import flops, params
from taslora_core.run_io import LoadedCheckpoint, load_checkpoint, resolve_mole
from taslora_core.subnet import Subnet
from taslora_core.workspace import BEST_JSON, DEFAULT_WORKDIR, EXPORT_IN_PROGRESS, latest, new_run
from taslora_deploy.artifacts import (
    MODEL_CONFIG,
    MODEL_ONNX,
    MODEL_PLAN,
    MODEL_WEIGHTS,
    REPORT,
    TIMING_CACHE,
    baseline_onnx,
)
from taslora_deploy.certificate.latency import EXPORT_TEST
from taslora_deploy.certificate.steps import CertificateInputs, certificate_steps
from taslora_deploy.fold import FoldResult, UnmergedMoLEViT, check_parity, fold_subnet
from taslora_deploy.precision.gate import DEFAULT_MAX_TOP1_DROP
from taslora_deploy.precision.steps import GateData, parse_precisions, precision_steps, trt_precision_steps
from taslora_deploy.preprocessing import checkpoint_preprocessing, stamp_onnx
from taslora_deploy.standalone.io import save_standalone
from taslora_deploy.standalone.model import StandaloneViT

if TYPE_CHECKING:
    from taslora_core.specialize.run_files import SpecializedRun

__all__ = ["ExportOptions", "ExportResult", "export", "run_export", "source_hashes", "REPORT"]

SEARCH_RESULT = BEST_JSON  # what `taslora search` writes; the default subnet of an export
LATENCY_MODES = ("strict", "report", "off")
EXPORT_RUNTIMES = ("ort-cpu", "ort-cuda", "torch-cpu", "torch-cuda", "torch-cuda-graph")
REAL_IMAGES = 16


@dataclass
class ExportOptions:
    """What `taslora export` does."""

    onnx: bool = True
    trt: bool = False
    fp16: bool = False
    no_lora: bool = False
    opset: int = 18
    parity_tolerance: float = 1e-5
    onnx_tolerance: float = 1e-4
    overhead: bool = True  # False: no latency measurements (structure and parity are still certified)
    latency_mode: str = "strict"  # strict: a latency verdict "different" fails the export; report: recorded; off
    latency_batch: int = 8  # of the unmerged-vs-folded comparison
    latency_batches: tuple[int, ...] = (1, 8)  # of the equivalence test
    latency_iters: int = EXPORT_TEST.first_pairs  # pairs at the first look of the latency test
    latency_time_s: float = EXPORT_TEST.time_limit_s  # per batch size: then the verdict is taken, even if inconclusive
    latency_warmup_s: float = EXPORT_TEST.warmup_s
    latency_margin: float = EXPORT_TEST.margin  # fail only when folded/baseline is above 1 + m (one-sided)
    latency_runtime: str | None = None  # ort-cpu with --onnx, else torch-cpu
    threads: int | None = None
    trt_max_batch: int = 64
    seed: int = 0
    precisions: tuple[str, ...] = ("fp32",)  # + fp16 / int8: reduced-precision twins, each with an accuracy gate
    calib_size: int = 512  # int8 calibration images from the run's held-out validation split
    max_top1_drop: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_TOP1_DROP))
    gate_images: int | None = None  # test images of the accuracy gates (None: the whole test split)
    # specialize (issue 27): fold the newest specialize run of the exported subnet and checkpoint (False:
    # --no-specialize); with specialize_epochs, run `taslora specialize` for that many epochs first
    specialize: bool = True
    specialize_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.latency_mode not in LATENCY_MODES:
            raise ValueError(f"--latency-check must be strict, report or off, not '{self.latency_mode}'")
        self.latency_config()  # validates the equivalence test's settings (one-line ValueError)
        if self.latency_runtime is not None and self.latency_runtime not in EXPORT_RUNTIMES:
            raise ValueError(f"--latency-runtime must be one of {', '.join(EXPORT_RUNTIMES)}, not '{self.latency_runtime}'")
        # `fp16=True` (the --fp16 flag) and "fp16" in `precisions` mean the same: keep both spellings in step
        self.precisions = parse_precisions([*self.precisions, *(("fp16",) if self.fp16 else ())])
        self.fp16 = "fp16" in self.precisions
        if self.calib_size < 1:
            raise ValueError(f"--calib-size must be >= 1, got {self.calib_size}")
        if self.gate_images is not None and self.gate_images < 1:
            raise ValueError(f"--gate-images must be >= 1, got {self.gate_images}")
        self.max_top1_drop = {**DEFAULT_MAX_TOP1_DROP, **self.max_top1_drop}
        if len(self.precisions) > 1:
            self.onnx = True  # the reduced-precision files are made from (and gated against) the fp32 ONNX
        if self.specialize_epochs is not None and (self.specialize_epochs < 1 or not self.specialize or self.no_lora):
            raise ValueError(f"--specialize-epochs must be >= 1 and goes without --no-specialize / --no-lora, got "
                             f"{self.specialize_epochs}")


    def latency_config(self):
        """The latency test's settings: the library's :data:`~taslora_deploy.certificate.latency.EXPORT_TEST` with
        this export's options."""
        return EXPORT_TEST.with_options(batch_sizes=tuple(self.latency_batches), margin=self.latency_margin,
                                        warmup_s=self.latency_warmup_s, first_pairs=self.latency_iters,
                                        max_pairs=max(EXPORT_TEST.max_pairs, self.latency_iters),
                                        time_limit_s=self.latency_time_s, seed=self.seed)


@dataclass
class ExportResult:
    """Outcome of an export: where everything is, the parity numbers, the overhead verdicts, failed steps.

    ``report`` is the content of report.json; the properties read the numbers a caller usually wants.
    """

    out: Path
    report: dict[str, Any]
    failures: dict[str, str]  # step -> one-line error
    artifacts: dict[str, Path]  # file name relative to `out` -> path, for the files the steps wrote
    subnet_path: Path | None = None
    ckpt_path: Path | None = None

    @property
    def ok(self) -> bool:
        """No step failed."""
        return not self.failures

    @property
    def report_path(self) -> Path:
        """report.json of the export."""
        return self.out / REPORT

    def _step(self, name: str) -> dict[str, Any]:
        entry = self.report.get(name)
        return entry if isinstance(entry, dict) and entry.get("ok") else {}

    @property
    def fold_parity_max_diff(self) -> float | None:
        """Worst |folded - run-time MoLE| over references and inputs (None when the step failed)."""
        diffs = [v for ref in self._step("parity").get("max_abs_diff", {}).values() for v in ref.values()]
        return max(diffs) if diffs else None

    @property
    def onnx_parity_max_diff(self) -> float | None:
        """Worst |onnxruntime - torch| of the folded ONNX model (None when not exported)."""
        return self._step("onnx").get("parity", {}).get("max_abs_diff")

    @property
    def same_structure(self) -> bool | None:
        """Folded and no-LoRA ONNX graphs have the same ops, parameters and FLOPs (None when not checked)."""
        entry = self.report.get("zero_overhead_structure")
        return None if entry is None else bool(entry.get("ok"))

    @property
    def latency_ratio(self) -> float | None:
        """Median per-pair folded/baseline latency ratio at the largest tested batch (None when not measured)."""
        return self._step("zero_overhead_latency").get("ratio_median")

    @property
    def latency_verdict(self) -> str | None:
        """equivalent / different / inconclusive (None when not measured)."""
        return (self.report.get("zero_overhead_latency") or {}).get("verdict")

    @property
    def certificates(self) -> dict[str, dict[str, Any]]:
        """precision -> {file, artifact, verdict, digest, reasons} of the certificates written."""
        return dict((self.report.get("certificate") or {}).get("certificates") or {})


class _StepRecorder:
    """Outcome of every step; report.json is rewritten after each."""

    def __init__(self, out: Path, log: Callable[[str], None] = print) -> None:
        self.out, self.log = out, log
        self.before = file_stamps(out)  # files already in --out: not this export's, so never certified by it
        self.data: dict[str, Any] = {}
        self.failures: dict[str, str] = {}
        self.artifacts: dict[str, Path] = {}

    def run(self, step: str, fn: Callable[[], Any], writes: tuple[Path, ...] = ()) -> Any:
        """Run one step; record its result (and the files it wrote) or its failure. None when it failed."""
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - every failure is recorded; later steps still run
            self.fail(step, err)
            return None
        self.artifacts.update({str(p.relative_to(self.out)): p for p in writes})
        self.record(step, result)
        return result

    def fail(self, step: str, err: Exception) -> None:
        """Record a step's failure (one line, its type, a short trace) and rewrite the report."""
        line = " ".join(str(err).split()) or type(err).__name__
        self.failures[step] = line
        # an accuracy gate's failure carries its numbers (PrecisionGateError.report): keep them
        numbers = getattr(err, "report", None)
        self.data[step] = {**({"gate": numbers} if isinstance(numbers, dict) else {}), "ok": False, "error": line,
                           "type": type(err).__name__, "trace": traceback.format_exc(limit=3)[-2000:]}
        self.save()

    def record(self, step: str, value: Any) -> None:
        """Store a step's result and rewrite the report."""
        self.data[step] = value
        self.save()

    def reject(self, step: str, value: dict[str, Any], line: str) -> None:
        """Record a step that ran but whose evidence fails it: its numbers are kept, the one-line reason listed."""
        self.failures[step] = " ".join(line.split())
        self.record(step, {**value, "ok": False, "error": self.failures[step]})

    def save(self, final: bool = False) -> None:
        """Atomically rewrite report.json: marked in progress until the `final` save, which records the sha256
        of every file this export wrote (what `taslora verify` and the checked readers compare against) and lists
        the files it found in the folder and left alone (refused by the checked readers)."""
        lines = [f"{step}: {line}" for step, line in self.failures.items()]
        marks: dict[str, Any] = {EXPORT_IN_PROGRESS: True}
        if final:
            written, kept = written_since(self.out, self.before)
            stale = [rel for rel in kept if rel != REPORT and not Path(rel).name.startswith(".")]
            marks = {EXPORT_HASHES_KEY: tree_hashes(self.out, only=written)}
            if stale:
                marks[EXPORT_NOT_WRITTEN_KEY] = stale
                self.log(f"warning: {len(stale)} file(s) in {self.out} were not written by this export "
                         f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}): report.json does not certify "
                         "them and the checked readers refuse them; export into a new folder")
        atomic_write_json(self.out / REPORT, {**marks, **self.data, "failures": lines, "ok": not lines})
        self.artifacts[REPORT] = self.out / REPORT

    def result(self, **paths: Path | None) -> ExportResult:
        """The typed outcome of the steps so far."""
        return ExportResult(self.out, dict(self.data), dict(self.failures), dict(self.artifacts), **paths)


def source_hashes(ckpt: LoadedCheckpoint) -> dict[str, str]:
    """SHA-256 of the checkpoint files the export came from (what a specialize run records of its source too)."""
    from taslora_core.specialize.inputs import checkpoint_hashes

    return checkpoint_hashes(ckpt)


# --------------------------------------------------------------------------- the verb


def export(
    subnet: str | os.PathLike | None = None,
    ckpt: str | os.PathLike | None = None,
    *,
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    out: str | os.PathLike | None = None,
    options: ExportOptions | None = None,
    log: Callable[[str], None] = print,
    specialized: str | os.PathLike | None = None,
) -> ExportResult:
    """Export a subnet of a checkpoint into a run folder and return the typed outcome.

    ``subnet``: a subnet JSON (default: best.json of the workspace's latest search). ``ckpt``: a MoLE or
    supernet run folder (default: the checkpoint the search recorded, else the latest MoLE run). ``out``:
    the output folder (default: a new ``exports/`` run in ``workdir``, named ``export`` or ``no-lora``).
    Bad input (missing files, a subnet outside the space) raises before any folder is created; a failing
    step does not raise: it is listed in ``result.failures`` and the artifacts written before it stay.
    ``specialized``: a specialize run to fold (default: the newest one of this subnet and checkpoint in
    ``workdir``, none with ``options.specialize`` False; its subnet and checkpoint when ``subnet`` is None).
    """
    options = options or ExportOptions()
    workdir = Path(workdir)
    if subnet is None and specialized is not None:
        from taslora_core.specialize.run_files import SUBNET_JSON

        subnet = Path(specialized) / SUBNET_JSON
    subnet_path = Path(subnet) if subnet is not None else latest(
        workdir, "searches", "run `taslora search --flops ...` first or pass --subnet FILE") / SEARCH_RESULT
    if not subnet_path.exists():
        raise FileNotFoundError(f"subnet file {subnet_path} does not exist; pass --subnet FILE")
    doc = read_json_artifact(subnet_path, "subnet file", "pass a JSON written by `taslora search` (--subnet FILE)") \
        if subnet_path.suffix == ".json" else {}
    ckpt_path = Path(ckpt) if ckpt is not None else (Path(doc["ckpt"]) if doc.get("ckpt") else resolve_mole(workdir, None))
    log(f"subnet: {subnet_path}")
    log(f"checkpoint: {ckpt_path}")
    loaded = load_checkpoint(ckpt_path)
    chosen = Subnet.load(subnet_path)
    if loaded.mole is not None and not options.no_lora:
        chosen.check_in_space(loaded.supernet.space)
    else:
        chosen.check_fits(loaded.supernet.space)
    spec = _pick_specialized(loaded, chosen, specialized, workdir, options, log)
    out_dir = Path(out) if out is not None else new_run(workdir, "exports", "no-lora" if options.no_lora else "export")
    log(f"output: {out_dir}")
    result = run_export(loaded, chosen, out_dir, options, _real_images(loaded.data, log), log=log, specialized=spec)
    result.subnet_path, result.ckpt_path = subnet_path, ckpt_path
    return result


def _pick_specialized(loaded: LoadedCheckpoint, subnet: Subnet, explicit: str | os.PathLike | None, workdir: Path,
                      options: ExportOptions, log: Callable[[str], None]) -> SpecializedRun | None:
    """The specialize run to fold (issue 27): `explicit`, a new one (--specialize-epochs), or the newest of this
    subnet and checkpoint in the workspace; None with --no-specialize / --no-lora or when there is none."""
    from taslora_core.specialize import SpecializeConfig, pick_specialized, specialize

    off = "--no-lora" if options.no_lora else "--no-specialize" if not options.specialize else None
    if off is not None:
        if explicit is not None:
            raise ValueError(f"--specialized {explicit} and {off} exclude each other; pass one of them")
        return None
    if options.specialize_epochs is not None:
        if explicit is not None:
            raise ValueError(f"--specialized {explicit} and --specialize-epochs exclude each other; pass one of them")
        source = {"ckpt": str(loaded.path)} if loaded.mole is not None else {"supernet": str(loaded.path)}
        log(f"specializing the subnet for {options.specialize_epochs} epoch(s) first (`taslora specialize`)")
        explicit = specialize(SpecializeConfig(workdir=str(workdir), subnet=json.dumps(subnet.to_dict()), **source,
                                               epochs=options.specialize_epochs, seed=options.seed,
                                               threads=options.threads, quiet=True), log=log).run_dir
    run = pick_specialized(workdir, explicit, subnet, source_hashes(loaded), loaded.supernet.space)
    if run is not None:
        d = run.describe()
        log(f"specialized: {run.path} ({d['weights']}, {d['steps_run']} steps; validation top-1 "
            f"{100 * d['val_top1_before']:.2f}% -> {100 * d['val_top1_after']:.2f}%): folding its deltas")
    return run


def _real_images(data: dict[str, Any] | None, log: Callable[[str], None], n: int = REAL_IMAGES) -> torch.Tensor | None:
    """The first `n` test images of the data a checkpoint was trained on (None when unavailable)."""
    if not data:
        return None
    from taslora_core.data import DataConfig, build_data, make_loaders

    try:
        cfg = DataConfig(**data)
        bundle = build_data(cfg, val_size=n)
        images, _ = next(iter(make_loaders(bundle, cfg, batch_size=n, num_workers=0).test))
        return images[:n]
    except Exception as err:  # noqa: BLE001 - real images are a bonus check; say why they are missing
        log(f"note: no real images for the parity check ({' '.join(str(err).split())})")
        return None


def run_export(
    ckpt: LoadedCheckpoint,
    subnet: Subnet,
    out: Path,
    options: ExportOptions,
    real_images: torch.Tensor | None = None,
    log: Callable[[str], None] = print,
    specialized: SpecializedRun | None = None,
) -> ExportResult:
    """Run every export step for `subnet` of an opened checkpoint into `out`; see the module docstring.

    With `specialized` (a specialize run of this subnet and checkpoint), its final deltas are folded instead of
    the routed experts, and parity is checked against the supernet forward with those deltas."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = _StepRecorder(out, log)
    space = ckpt.supernet.space
    supernet = ckpt.supernet.eval()
    mole = None if options.no_lora or ckpt.mole is None else ckpt.mole.eval()
    spec_deltas = specialized.deltas if specialized is not None else None  # the mixture is inside them
    spec = {"specialized": specialized.describe()} if specialized is not None else {}
    if specialized is not None:
        mole = None
    torch.manual_seed(options.seed)
    steps.record("source", {"ckpt": str(ckpt.path), "kind": ckpt.kind, "sha256": source_hashes(ckpt),
                            "subnet": subnet.to_dict(), "space": space.name,
                            "lora": mole is not None or spec_deltas is not None, **spec})

    # 1. router once, fold, materialise (and the no-LoRA baseline for the checks)
    folded: FoldResult = fold_subnet(supernet, subnet, mole, deltas=spec_deltas)
    baseline = fold_subnet(supernet, subnet).model
    shape = folded.model.input_shape
    log(f"folded {'experts into ' if mole is not None else 'specialized deltas into ' if spec else ''}subnet (embed {subnet.embed_dim}, depth {subnet.depth})")

    # 2. parity with the MoLE supernet applied at run time, on random and real images
    inputs = {"random": torch.randn(8, *shape, generator=torch.Generator().manual_seed(options.seed))}
    if real_images is not None:
        inputs["real"] = real_images[:REAL_IMAGES]
    references: dict[str, Any] = {"supernet_runtime": lambda x: supernet(x, subnet, mole.deltas(subnet) if mole else spec_deltas)}
    if mole is not None:
        references["unmerged_lora_branches"] = UnmergedMoLEViT(supernet, subnet, mole)
    parity = steps.run("parity", lambda: {
        "max_abs_diff": check_parity(folded.model, references, inputs, options.parity_tolerance),
        "tolerance": options.parity_tolerance, "ok": True})
    if parity is None:
        log(f"parity FAILED: parity: {steps.failures['parity']}")

    # 3. safetensors + config.json
    routing = folded.routing.tolist() if folded.routing is not None else (specialized.record.get("routing")
                                                                           if specialized is not None else None)
    config_extra = {
        **spec, "routing": routing, "routing_entropy": folded.routing_entropy(),
        "lora_folded": mole is not None or spec_deltas is not None,
        "source": steps.data["source"], "flops_autoformer": flops(space, subnet, "autoformer"),
        "flops_macs": flops(space, subnet, "macs"), "params": params(space, subnet),
    }
    preprocessing = checkpoint_preprocessing(ckpt, log)  # how to feed it (issue 27): config.json + model.onnx
    steps.run("standalone", lambda: {"dir": str(save_standalone(out, folded.model, config_extra, preprocessing)),
                                     "ok": True}, writes=(out / MODEL_WEIGHTS, out / MODEL_CONFIG))
    log(f"wrote {out / MODEL_WEIGHTS} and {out / MODEL_CONFIG}")

    onnx_path, base_onnx = out / MODEL_ONNX, baseline_onnx(out)
    gate_data = GateData(ckpt, options.gate_images)  # test batches + fp32 logits, shared by every precision's gate
    if options.onnx:
        _require_onnxruntime(steps)
        _export_onnx_steps(steps, folded.model, baseline, onnx_path, base_onnx, options, inputs, log)
        if preprocessing is not None and onnx_path.is_file():  # before the twins and the certificate's own stamp
            steps.run("preprocessing", lambda: stamp_onnx(onnx_path, preprocessing), writes=(onnx_path,))
        if len(options.precisions) > 1:
            precision_steps(steps, ckpt, onnx_path, options.precisions, calib_size=options.calib_size,
                            max_top1_drop=options.max_top1_drop, data=gate_data, threads=options.threads, log=log)
    if specialized is not None and options.overhead and options.onnx:
        steps.record("unmerged_vs_folded", {"ok": True, "skipped": (
            "a specialized export folds one subnet's own deltas: there are no run-time router and LoRA branches "
            "to compare against (parity is checked against the supernet forward with those deltas)")})
    certificate_steps(steps, CertificateInputs(
        out, space, subnet, folded.model, baseline, references["supernet_runtime"], inputs.get("real"),
        {"subnet": subnet.to_dict(), "space": space.name, "lora_folded": config_extra["lora_folded"], **spec,
         **{k: config_extra[k] for k in ("flops_macs", "flops_autoformer", "params")},
         "source_sha256": steps.data["source"]["sha256"], "ckpt": str(ckpt.path)},
        (lambda: UnmergedMoLEViT(ckpt.supernet, subnet, mole)) if mole is not None and options.onnx else None),
        options, log)
    if options.trt:
        _trt_steps(steps, folded.model, onnx_path, options, gate_data, log)
    steps.save(final=True)
    return steps.result()


def _export_onnx_steps(steps: _StepRecorder, model: StandaloneViT, baseline: StandaloneViT, onnx_path: Path,
                       base_onnx: Path, options: ExportOptions, inputs: dict[str, torch.Tensor], log) -> None:
    from taslora_deploy.onnx_export import export_onnx
    from taslora_deploy.ort_parity import check_onnx_parity

    shape = model.input_shape

    def export_main() -> dict[str, Any]:
        export_onnx(model, onnx_path, input_shape=shape, opset=options.opset)
        parity = check_onnx_parity(model, onnx_path, shape, batch_sizes=(1, 7), atol=options.onnx_tolerance,
                                   inputs=inputs.get("real"), seed=options.seed)
        return {"path": str(onnx_path), "opset": options.opset, "parity": parity, "ok": True}

    if steps.run("onnx", export_main, writes=(onnx_path,)) is not None:
        log(f"wrote {onnx_path} (opset {options.opset}, dynamic batch; onnxruntime parity <= {options.onnx_tolerance:g})")
    steps.run("onnx_baseline", lambda: {
        "path": str(export_onnx(baseline, base_onnx, input_shape=shape, opset=options.opset)), "ok": True},
        writes=(base_onnx,))


def _require_onnxruntime(steps: _StepRecorder) -> None:
    """Without onnxruntime the ONNX steps cannot run: record it, close the report, raise the one-line user error
    (model.safetensors is already written)."""
    from taslora_deploy.errors import OnnxRuntimeMissing
    from taslora_deploy.ort_parity import require_onnxruntime

    try:
        require_onnxruntime()
    except OnnxRuntimeMissing as err:
        steps.fail("onnx", err)
        steps.save(final=True)
        raise


def _trt_steps(steps: _StepRecorder, model: StandaloneViT, onnx_path: Path, options: ExportOptions,
               gate_data: GateData, log) -> None:
    """TensorRT engines (strongly typed: precision comes from each ONNX file): fp32 from model.onnx, fp16 from
    model_fp16.onnx, int8 from the QDQ model_int8.onnx (explicit quantization)."""
    from taslora_deploy.trt_engine import build_engine, compare_trt_to_ort, require_tensorrt

    def build(src: Path, plan: Path, precision: str = "fp32") -> dict[str, Any]:
        require_tensorrt()
        build_engine(src, plan, model.input_shape, max_batch=options.trt_max_batch,
                     timing_cache_path=onnx_path.with_name(TIMING_CACHE))
        if precision == "int8":  # random inputs say little about int8 ranges: the accuracy gate checks it
            return {"plan": str(plan), "source": str(src)}
        cmp = compare_trt_to_ort(plan, onnx_path, model.input_shape, batch_sizes=(1, 8), fp16=precision == "fp16")
        return {"plan": str(plan), "source": str(src), "compare": cmp, "ok": True}

    plan = onnx_path.with_name(MODEL_PLAN)
    if steps.run("tensorrt", lambda: build(onnx_path, plan), writes=(plan,)) is not None:
        log(f"wrote {plan}")
    trt_precision_steps(steps, onnx_path, options.precisions, max_top1_drop=options.max_top1_drop,
                        data=gate_data, threads=options.threads, log=log, build=build)
