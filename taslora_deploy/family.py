"""`taslora export --family`: the members of a Pareto front (pareto.json) exported and certified, one table.

:func:`export_family` is the library verb. It reads the front (``taslora_core.search.pareto_file``), checks it
against the checkpoint's search space, picks the members (all, or N spread evenly along the front, both ends
included) and runs the one export verb (:func:`taslora_deploy.pipeline.export`) for each into its own folder
``member-<i>-<flops>/`` (usual artifacts + report.json: fold parity, ONNX parity, zero-overhead checks, and the
member's zero-overhead certificate.json, whose verdict is a column of the table). It then
times each member on the chosen runtime (:func:`taslora_deploy.bench.verb.bench`, THE timing loop underneath),
optionally measures test top-1 (:func:`taslora_core.evaluate.evaluate`), and writes ``family.json`` (rewritten
after every member), ``family.md`` and ``family.png``. A member that fails a step is marked failed with that
step and its one-line message; the others still go on. With ``options.specialize_epochs`` (``--specialize-epochs
N``) every member is first fine-tuned alone (:func:`taslora_core.specialize.specialize`, a run in the workspace's
``specialized/``) and its export folds that run; without it, export folds the newest specialize run of the member's
subnet if the workspace holds one (``--no-specialize``: never). The table says what each member's was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from taslora_core.atomic import atomic_write_json, atomic_write_text
from taslora_core.complexity import format_amount
from taslora_core.run_io import LoadedCheckpoint, load_checkpoint
from taslora_core.search.pareto_file import ParetoMember, check_same_space, read_pareto
from taslora_core import workspace
from taslora_core.workspace import DEFAULT_WORKDIR, EXPORT_IN_PROGRESS, new_run
from taslora_deploy.artifacts import MODEL_ONNX, MODEL_PLAN
from taslora_deploy.pipeline import ExportOptions, ExportResult, export

__all__ = ["FAMILY_JSON", "FAMILY_MD", "FAMILY_PNG", "RUNTIMES", "FamilyError", "FamilyMember", "FamilyResult",
           "FamilyTiming", "default_timing",
           "TABLE_COLUMNS", "export_family", "family_markdown", "member_row", "specialized_lines", "spread_indices"]

FAMILY_JSON = workspace.FAMILY_JSON  # marked in progress until the last member; finished once family.md exists
FAMILY_MD = workspace.FAMILY_MD
FAMILY_PNG = "family.png"
SUBNET_JSON = "subnet.json"  # the member's subnet, the file its export was run from
FAMILY_FORMAT, FAMILY_VERSION = "taslora-family", 1

RUNTIMES: dict[str, tuple[str | None, str]] = {
    # runtime -> (artifact inside the member folder, None = the standalone PyTorch folder; bench device)
    "ort-cpu": (MODEL_ONNX, "cpu"),
    "ort-cuda": (MODEL_ONNX, "cuda"),
    "trt": (MODEL_PLAN, "cuda"),
    "torch-cpu": (None, "cpu"),
    "torch-cuda": (None, "cuda"),
}


class FamilyError(ValueError):
    """Bad input to a family export (unusable pareto.json, wrong space, --members < 1): one line naming the file."""


@dataclass
class FamilyMember:
    """One exported member of the front and what was measured on it."""

    index: int  # position in the front (sorted by cost ascending)
    folder: str  # relative to the family folder
    subnet: dict[str, Any]
    flops_autoformer: float
    flops_macs: float
    params: int
    val_loss: float | None  # validation loss the search measured
    search_latency_ms: float | None = None  # the search's latency objective, when it had one
    search_latency_source: str | None = None
    top1_test: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    overhead_ratio: float | None = None  # median per-pair folded/baseline latency ratio (largest tested batch)
    latency_verdict: str | None = None  # equivalent / different / inconclusive (None: not measured)
    certificate: str | None = None  # the verdict of the member's certificate.json
    fold_parity_max_diff: float | None = None
    onnx_parity_max_diff: float | None = None
    same_structure: bool | None = None
    specialized: dict[str, Any] | None = None  # the specialize run folded (run, weights, steps, seconds, val gain)
    status: str = "ok"  # ok | failed
    failed_step: str | None = None
    error: str | None = None
    failures: dict[str, str] = field(default_factory=dict)  # every failed step -> one-line message

    @property
    def ok(self) -> bool:
        """No step failed for this member."""
        return self.status == "ok"

    def fail(self, step: str, message: str) -> None:
        """Record a failed step (the first one is the member's failed_step)."""
        line = " ".join(str(message).split()) or "failed"
        self.failures[step] = line
        if self.status == "ok":
            self.status, self.failed_step, self.error = "failed", step, line

    def to_dict(self) -> dict[str, Any]:
        """JSON form (a family.json member)."""
        return asdict(self)


@dataclass(frozen=True)
class FamilyTiming:
    """How each member is timed (bench's loop: warm-up, then >= min_iters calls and >= min_time_s seconds)."""

    runtime: str = "ort-cpu"  # a key of RUNTIMES
    batch: int = 1
    threads: int | None = None
    warmup_s: float = 1.0
    min_iters: int = 300
    min_time_s: float = 1.0

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise FamilyError(f"unknown family runtime '{self.runtime}'; choose one of {', '.join(RUNTIMES)}")
        if self.batch < 1 or self.min_iters < 1:
            raise FamilyError(f"latency batch and iterations must be at least 1, not {self.batch} and {self.min_iters}")


@dataclass
class FamilyResult:
    """Outcome of :func:`export_family`: the family folder, its members and the files written there."""

    out: Path
    pareto_path: Path
    ckpt_path: Path
    timing: FamilyTiming
    members: list[FamilyMember]
    accuracy: str  # what family.png plots: "test top-1" or "validation loss"

    @property
    def ok(self) -> bool:
        """Every member passed every step."""
        return all(m.ok for m in self.members)

    @property
    def runtime(self) -> str:
        """The runtime the members were timed on."""
        return self.timing.runtime

    @property
    def latency_batch(self) -> int:
        """The batch size they were timed at."""
        return self.timing.batch

    @property
    def failed(self) -> list[FamilyMember]:
        """The members that failed a step."""
        return [m for m in self.members if not m.ok]

    @property
    def json_path(self) -> Path:
        """family.json."""
        return self.out / FAMILY_JSON

    @property
    def md_path(self) -> Path:
        """family.md."""
        return self.out / FAMILY_MD

    @property
    def png_path(self) -> Path:
        """family.png."""
        return self.out / FAMILY_PNG

    def to_dict(self) -> dict[str, Any]:
        """The content of family.json."""
        return {"format": FAMILY_FORMAT, "version": FAMILY_VERSION, "pareto": str(self.pareto_path),
                "ckpt": str(self.ckpt_path), "runtime": self.runtime, "timing": asdict(self.timing),
                "accuracy": self.accuracy, "ok": self.ok,
                "failures": [f"{m.folder}: {m.failed_step}: {m.error}" for m in self.failed],
                "members": [m.to_dict() for m in self.members]}


def spread_indices(count: int, wanted: int | None) -> list[int]:
    """Indices of `wanted` (>= 1) members spread evenly over a front of `count` (both ends included; all when None
    or `wanted >= count`; the last, most accurate one when `wanted == 1`)."""
    if wanted is None or wanted >= count:
        return list(range(count))
    if wanted == 1:
        return [count - 1]
    steps = wanted - 1  # floor(i * (count - 1) / steps + 1/2) in integers: distinct because the step is >= 1
    return [(2 * i * (count - 1) + steps) // (2 * steps) for i in range(wanted)]


def default_timing(options: ExportOptions) -> FamilyTiming:
    """How a family exported with `options` is timed: on TensorRT with --trt, else onnxruntime on the CPU with
    --onnx, else the standalone PyTorch model on the CPU; batch 1 (as the search's latency objective), with the
    export's threads, warm-up and iterations, and at least one second of timed calls."""
    runtime = "trt" if options.trt else "ort-cpu" if options.onnx else "torch-cpu"
    return FamilyTiming(runtime, threads=options.threads, warmup_s=options.latency_warmup_s,
                        min_iters=options.latency_iters)


def export_family(
    pareto_json: str | os.PathLike,
    ckpt: str | os.PathLike | None = None,
    *,
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    out: str | os.PathLike | None = None,
    members: int | None = None,
    options: ExportOptions | None = None,
    eval_test: bool = False,
    timing: FamilyTiming | None = None,
    log: Callable[[str], None] = print,
) -> FamilyResult:
    """Export the members of a Pareto front (all, or `members` spread along it) and tabulate them.

    ``ckpt``: a MoLE or supernet run folder (default: the checkpoint the search recorded). ``out``: the family
    folder (default: a new ``exports/`` run named ``family`` in ``workdir``).
    ``timing``: how each member is timed (default: :func:`default_timing` of ``options``). ``eval_test``: also
    measure test top-1 of each member (experts folded as exported). Bad input (missing or damaged pareto.json,
    an empty front, a front of another search space, ``members < 1``) raises before any
    folder is created; a member that fails a step is recorded as failed and the others go on.
    """
    options = options or ExportOptions()
    timing = timing or default_timing(options)
    if members is not None and members < 1:
        raise FamilyError(f"--members must be at least 1, not {members} (how many members of {pareto_json} to export)")
    front = read_pareto(pareto_json)  # refuses a missing, damaged, foreign or empty file in one line
    pareto_path = front.path or Path(pareto_json)
    chosen = spread_indices(len(front.members), members)
    ckpt_path = Path(ckpt) if ckpt is not None else Path(front.ckpt)
    loaded = load_checkpoint(ckpt_path)
    check_same_space(front, loaded.supernet.space)
    test_batches = _test_batches(loaded) if eval_test else None  # no test set: refused before any folder exists
    out_dir = Path(out) if out is not None else new_run(workdir, "exports", "family")
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"pareto front: {pareto_path} ({len(front.members)} members; exporting {len(chosen)})")
    log(f"checkpoint: {ckpt_path}")
    if not front.use_experts and loaded.mole is not None and not options.no_lora:
        log("note: the front was searched without the experts; its members are exported with them folded "
            "(pass --no-lora to export the plain subnets the search measured)")
    log(f"output: {out_dir}")
    result = FamilyResult(out_dir, pareto_path, ckpt_path, timing, [],
                          "test top-1" if eval_test else "validation loss")
    for n, index in enumerate(chosen, 1):
        member = front.members[index]
        record = _member_record(index, member, front.counter)
        log(f"member {n}/{len(chosen)}: {record.folder}")
        _export_member(record, out_dir, ckpt_path, workdir, options, timing, log, experts=loaded.mole is not None)
        if test_batches is not None:
            _evaluate_member(record, member, loaded, test_batches, options)
        result.members.append(record)
        atomic_write_json(result.json_path, {**result.to_dict(), EXPORT_IN_PROGRESS: True})  # progress survives a kill
        log(f"member {record.folder}: {record.status}" + (f" ({record.failed_step}: {record.error})" if record.error else ""))
    _write_summary(result)
    return result


# --------------------------------------------------------------------------- one member


def _member_record(index: int, member: ParetoMember, counter: str) -> FamilyMember:
    return FamilyMember(
        index=index, folder=f"member-{index}-{format_amount(member.flops(counter))}", subnet=member.subnet.to_dict(),
        flops_autoformer=member.flops_autoformer, flops_macs=member.flops_macs, params=member.params,
        val_loss=member.loss, search_latency_ms=member.latency_ms, search_latency_source=member.latency_source)


def _export_member(record: FamilyMember, out_dir: Path, ckpt_path: Path, workdir: str | os.PathLike,
                   options: ExportOptions, timing: FamilyTiming, log: Callable[[str], None],
                   experts: bool = True) -> None:
    """The usual export into the member's folder (specialised first with --specialize-epochs), then its latency;
    failures go into `record`."""
    folder = out_dir / record.folder
    subnet_path = atomic_write_json(folder / SUBNET_JSON, record.subnet)
    specialized = None
    if options.specialize_epochs is not None:
        try:
            specialized = _specialize_member(record, ckpt_path, workdir, options, experts, log)
        except Exception as err:  # noqa: BLE001 - a member that cannot be specialised is marked failed
            record.fail("specialize", f"{type(err).__name__}: {err}")
            return
        options = replace(options, specialize_epochs=None)  # export folds the run just made
    try:
        exported = export(subnet_path, ckpt_path, workdir=workdir, out=folder, options=options,
                          log=lambda line: log(f"  {line}"), specialized=specialized)
    except Exception as err:  # noqa: BLE001 - a member that cannot be exported is marked failed; the rest go on
        record.fail("export", f"{type(err).__name__}: {err}")
        return
    _copy_checks(record, exported)
    try:
        record.latency_p50_ms, record.latency_p99_ms = _latency(folder, timing)
    except Exception as err:  # noqa: BLE001 - recorded like a failed export step
        record.fail("latency", f"{type(err).__name__}: {err}")


def _specialize_member(record: FamilyMember, ckpt_path: Path, workdir: str | os.PathLike, options: ExportOptions,
                       experts: bool, log: Callable[[str], None]) -> Path:
    """`taslora specialize` of the member's subnet for --specialize-epochs (a run in the workspace's specialized/)."""
    from taslora_core.specialize import SpecializeConfig, specialize

    source = {"ckpt": str(ckpt_path)} if experts else {"supernet": str(ckpt_path)}
    config = SpecializeConfig(workdir=str(workdir), subnet=json.dumps(record.subnet), epochs=options.specialize_epochs,
                              seed=options.seed, threads=options.threads, quiet=True, **source)
    return specialize(config, log=lambda line: log(f"  {line}")).run_dir


def _copy_checks(record: FamilyMember, exported: ExportResult) -> None:
    record.specialized = (exported.report.get("source") or {}).get("specialized")
    record.fold_parity_max_diff = exported.fold_parity_max_diff
    record.onnx_parity_max_diff = exported.onnx_parity_max_diff
    record.same_structure = exported.same_structure
    record.overhead_ratio = exported.latency_ratio
    record.latency_verdict = exported.latency_verdict
    record.certificate = (exported.certificates.get("fp32") or {}).get("verdict")
    for step, line in exported.failures.items():
        record.fail(step, line)


def _latency(folder: Path, timing: FamilyTiming) -> tuple[float, float]:
    """p50/p99 latency (ms) of the member's artifact on the timing's runtime (bench's trtexec-like loop)."""
    from taslora_deploy.bench.verb import bench

    name, device = RUNTIMES[timing.runtime]
    artifact = folder / name if name is not None else folder
    if not artifact.exists():
        raise FileNotFoundError(f"{artifact} was not written; runtime {timing.runtime} needs it")
    row = bench(artifact, batch_sizes=(timing.batch,), warmup_s=timing.warmup_s, min_iters=timing.min_iters,
                min_time_s=timing.min_time_s, device=device, threads=timing.threads, cuda_graphs=False)[0]
    return float(row["p50_ms"]), float(row["p99_ms"])


def _test_batches(loaded: LoadedCheckpoint) -> list:
    """The checkpoint's test set as evaluation batches, loaded once for every member."""
    from taslora_core.data import DataConfig, load_test_batches

    if not loaded.data:
        raise FamilyError(f"checkpoint {loaded.path} records no data settings; --eval-test cannot find its test set")
    return load_test_batches(DataConfig(**loaded.data))


def _evaluate_member(record: FamilyMember, member: ParetoMember, loaded: LoadedCheckpoint, batches: list, options: ExportOptions) -> None:
    """Test top-1 of the member as exported (experts folded unless --no-lora; a specialized member with its
    specialize run's deltas); a failure marks the member."""
    from taslora_core.evaluate import evaluate
    from taslora_core.specialize import read_specialized

    try:
        deltas = read_specialized(record.specialized["run"]).delta_source() if record.specialized else loaded.mole
        res = evaluate(loaded.supernet, member.subnet, batches, deltas,  # type: ignore[arg-type]
                       use_experts=record.specialized is not None or not options.no_lora)
        record.top1_test = float(res.top1)
    except Exception as err:  # noqa: BLE001 - recorded like a failed export step
        record.fail("eval_test", f"{type(err).__name__}: {err}")


# --------------------------------------------------------------------------- family.json / .md / .png


TABLE_COLUMNS = ("member", "FLOPs (autoformer)", "FLOPs (MACs)", "params", "val loss", "test top-1 %",
                 "p50 ms", "p99 ms", "overhead ratio", "certificate", "status")
"""The columns of the family table (family.md and the CLI's table); one :func:`member_row` per member."""


def member_row(m: FamilyMember) -> list[str]:
    """A member's cells under :data:`TABLE_COLUMNS` ('-' for what was not measured)."""
    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    status = "ok" if m.ok else f"failed: {m.failed_step}: {m.error}"
    return [m.folder, format_amount(m.flops_autoformer), format_amount(m.flops_macs), format_amount(m.params),
            num(m.val_loss, ".4f"), num(None if m.top1_test is None else 100 * m.top1_test, ".2f"),
            num(m.latency_p50_ms, ".3f"), num(m.latency_p99_ms, ".3f"), num(m.overhead_ratio, ".4f"),
            m.certificate or "-", status]


def specialized_lines(members: Sequence[FamilyMember]) -> list[str]:
    """One line per specialized member (what its export folded, for how long, what it bought on validation)."""
    out = []
    for m in members:
        s = m.specialized
        if s:
            out.append(f"- {m.folder}: specialized ({s['weights']}, {s['steps_run']} steps, best at step "
                       f"{s['best_step']}, {s['wall_seconds']:.0f} s): validation top-1 {100 * s['val_top1_before']:.2f}% "
                       f"-> {100 * s['val_top1_after']:.2f}% ({s['val_top1_gain_points']:+.2f} points); run {s['run']}")
    return out


def family_markdown(result: FamilyResult) -> str:
    """family.md: one row per member (the same numbers as family.json)."""
    head = (f"Family of {result.pareto_path} on {result.ckpt_path}; latency on {result.runtime}, "
            f"batch {result.latency_batch}.\n\n")
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in member_row(m)) + " |" for m in result.members]
    spec = specialized_lines(result.members)
    if spec:
        lines += ["", "Folded specialize runs (`taslora specialize`, early-stopped on the held-out validation split):",
                  "", *spec]
    return head + "\n".join(lines) + "\n"


def _write_summary(result: FamilyResult) -> None:
    from taslora_core.plots import plot_family

    atomic_write_json(result.json_path, result.to_dict())
    atomic_write_text(result.md_path, family_markdown(result))
    ylabel = "test top-1 (%)" if result.accuracy == "test top-1" else "validation loss"
    plot_family(_plot_points(result.members, result.accuracy), result.png_path, ylabel=ylabel,
                xlabel=f"latency p50 (ms), {result.runtime}, batch {result.latency_batch}")


def _plot_points(members: Sequence[FamilyMember], accuracy: str) -> list[dict[str, Any]]:
    """One point per member: label, measured latency, accuracy (test top-1 in % or validation loss), ok."""
    def y(m: FamilyMember) -> float | None:
        if accuracy == "test top-1":
            return None if m.top1_test is None else 100 * m.top1_test
        return m.val_loss

    return [{"label": m.folder, "x": m.latency_p50_ms, "y": y(m), "ok": m.ok} for m in members]
