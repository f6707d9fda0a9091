"""Measured latency of subnets on a deployment target, with a lookup cache keyed by subnet (for `search --latency-budget`).

A subnet's latency depends only on its shapes, never on its weight values, so each subnet is materialised from
the bare supernet (`taslora_deploy.standalone.model.materialize`; the folded experts would change values, not shapes:
that is the zero-overhead claim) and timed at one batch size (`batch`, default 1; part of the cache key):

- ``torch-cpu``: the standalone ViT in torch (inference mode) on the CPU;
- ``torch-cuda``: the same on the current CUDA device (synchronised per call);
- ``ort-cpu``: its ONNX file (the graph `taslora_deploy.onnx_export.export_onnx` writes, assembled from exported
  parts by `taslora_deploy.measure_onnx`) run by onnxruntime on the CPU;
- ``trt``: the same ONNX file built into a TensorRT engine (a profile of exactly `batch`) and run on the current
  CUDA device.

An ONNX file depends only on the subnet's shapes, so with `export_dir` each file, and each exported part under its
``parts/``, is kept there and reused (by another batch size, another fit, by ort-cpu and trt alike); a fit then
exports each distinct part once (stem and tail per embed dim, a block per block shape) instead of each subnet
whole (`taslora_deploy.fit_latency`). `measure_many` times a set of subnets the robust
way: all runners are prepared first, then timed in `rounds` shuffled passes (machine drift hits every subnet
alike), and a subnet whose fastest pass no other pass confirms (within +5%) is timed again in further passes, up
to `max_rounds`; the value kept is the median of the passes within +5% of the fastest confirmed one
(`confirmed_value`: a busy machine only ever adds time, so passes slowed by a burst of other work are dropped,
while a lone fast pass is not trusted). By default each pass is paired: the subnet is timed in interleaved pairs
with one reference subnet and the ratio kept (`timing.ratio_until_known`), so a machine whose speed changes from
second to second (beside another process) changes both sides alike; values are ratios times the reference's own
latency over the whole call. The spread between passes is the measurement noise.

The value is the `statistic` of timed runs after `warmup` runs, timed until it is known (`taslora_deploy.timing.
time_until_known`: calls per sample autoranged, samples until the statistic's 95% interval is within +-2%, at
least `iters` samples and at most `max_time_s` seconds), single-threaded by
default (`threads=1`: stable on a shared machine; multi-threaded batch-1 timings of small models vary by 10x under
load). `statistic="min"` keeps the fastest run instead: on a machine shared with other jobs most runs wait for a
core and the median measures the load, while the fastest run is what the model costs (Python's `timeit` gives
the same advice); it is the deployment latency only where the machine is otherwise idle, so median stays the
default. Measurements are noisy, so every value is cached (and the cache is saved as JSON, keyed by target, batch,
statistic, host and search space; it records the threads) and reused: a search, its
resume and a later search on the same machine see the same number for the same subnet. A cache that cannot be
used (damaged, truncated, another target's, or edited: it records the sha256 of its table) is ignored with one
warning line naming it and its subnets are measured again (a cache only saves time; refusing it would only
make the user delete it by hand); the next save rewrites it. Under
torch.distributed only rank 0 measures and broadcasts the value, so every rank makes the same decisions.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from taslora_core.artifact_read import ArtifactError, read_json_artifact
from taslora_core.atomic import atomic_write_json
from taslora_core.search.latency import LatencyLookup, MeasureSpec, check_measure
from taslora_core.search.latency_model import measurement_stem, space_hash
from taslora_core.search.objectives import LATENCY_TARGETS
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet
from taslora_deploy.artifacts import MODEL_ONNX
from taslora_deploy.timing import (
    KnownTiming, interleaved_latency, latency_stats, ratio_until_known, time_until_known, torch_threads, warm_up,
)

PARTS_DIR = "parts"
"""Where, under an export dir, the exported parts of measurement files are kept (`measure_onnx`)."""

TARGETS = LATENCY_TARGETS  # the one list of targets (taslora_core.search.objectives)
CACHE_FORMAT = "taslora-latency-cache"
PREPARE_CHUNK = 32
"""Subnets whose runners (an ONNX session, an engine) are held at once by `measure_many`."""
CONFIRM_WITHIN = 0.05
"""Two timing passes of a subnet within this fraction of each other confirm its latency (`confirmed_value`)."""


def default_max_rounds(rounds: int) -> int:
    """The most passes `measure_many` takes per subnet by default: twice the planned ones, plus one."""
    return 2 * int(rounds) + 1

Cleanup = Callable[[], None] | None


class LatencyUnavailable(ValueError):
    """The requested latency target cannot run here (no CUDA, no onnxruntime, export failure)."""


def _table_sha256(table: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def default_cache_path(workdir: str | Path, target: str, space: SearchSpace, batch: int = 1,
                       statistic: str = "median") -> Path:
    """`<workdir>/latency-cache/<measurement_stem>.json` (`taslora_core.search.latency_model.measurement_stem`)."""
    return Path(workdir) / "latency-cache" / f"{measurement_stem(target, batch, statistic, space)}.json"


def latency_factory(workdir: str | Path | None, ctx: Any = None,
                    export_dir: str | Path | None = None) -> Callable[[Any, MeasureSpec], LatencyLookup]:
    """The search's latency lookups: ``(supernet, MeasureSpec) -> LatencyTable`` cached under
    ``<workdir>/latency-cache`` (:func:`default_cache_path`; ``workdir`` None: in memory only), ONNX exports kept in
    ``export_dir`` when given, the measurements broadcast from rank 0 under ``ctx`` (torch.distributed)."""

    def make(supernet: Any, spec: MeasureSpec) -> LatencyTable:
        path = None if workdir is None else default_cache_path(workdir, spec.target, supernet.space, spec.batch,
                                                                    spec.statistic)
        return LatencyTable(supernet, spec.target, path, threads=spec.threads, ctx=ctx, batch=spec.batch,
                            export_dir=export_dir, statistic=spec.statistic)

    return make


def check_target(target: str) -> None:
    """Raise LatencyUnavailable (one line, with the fix) when `target` cannot be measured here."""
    if target not in TARGETS:
        raise LatencyUnavailable(f"unknown latency target '{target}'; choose one of {', '.join(TARGETS)}")
    if target == "torch-cuda" and not torch.cuda.is_available():
        raise LatencyUnavailable("--target torch-cuda needs a CUDA device; use --target torch-cpu or ort-cpu here")
    if target == "ort-cpu":
        try:
            importlib.import_module("onnxruntime")
        except ImportError:
            raise LatencyUnavailable("--target ort-cpu needs onnxruntime (pip install 'taslora[cpu]')") from None
    if target == "trt":
        from taslora_deploy.trt_engine import tensorrt_status

        ok, reason = tensorrt_status()
        if not ok:
            raise LatencyUnavailable(f"--target trt needs TensorRT on a CUDA device ({reason.splitlines()[0]}); "
                                     "use --target torch-cuda, torch-cpu or ort-cpu here")


def runtime_versions(target: str) -> dict[str, str | None]:
    """Versions of the software a latency on `target` depends on (recorded with caches and latency models)."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    if target == "ort-cpu":
        versions["onnxruntime"] = _version("onnxruntime")
    if target == "trt":
        versions["tensorrt"] = _version("tensorrt")
    if target in ("torch-cuda", "trt"):
        versions["cuda"] = torch.version.cuda
        versions["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return versions


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except (ImportError, AttributeError):
        return None


def confirmed_value(passes: Sequence[float], within: float = CONFIRM_WITHIN) -> tuple[float, bool]:
    """(latency, settled) from one subnet's per-pass values: the median of the passes within +`within` of the
    fastest pass that another pass confirms (is within +`within` of it). Other work on the machine only adds time,
    so passes slowed by a burst of it are left out, and a lone fast pass is not trusted. `settled`: the fastest
    pass itself is confirmed (no faster value is left unexplained); with no confirmed pass, the median of all."""
    if not passes:
        raise ValueError("confirmed_value needs at least one pass")
    xs = sorted(float(v) for v in passes)
    for i, fastest in enumerate(xs[:-1]):
        if xs[i + 1] <= fastest * (1 + within):
            return float(statistics.median([v for v in xs[i:] if v <= fastest * (1 + within)])), i == 0
    return float(statistics.median(xs)), False


def median_flops_subnet(space: SearchSpace, subnets: Sequence[Subnet]) -> Subnet:
    """The subnet of median FLOPs (AutoFormer's counter; the lower middle of an even count, ties by key): the
    reference `measure_many` times every subnet against, as close as the set allows to all of them."""
    from taslora_core.search.measures import flops_of

    ranked = sorted(subnets, key=lambda s: (flops_of(space, s, "autoformer"), LatencyTable.key(s)))
    return ranked[(len(ranked) - 1) // 2]


class LatencyTable:
    """Callable subnet -> median latency in ms of one `batch` on `target`, measured once per subnet and cached."""

    def __init__(self, supernet: torch.nn.Module, target: str = "torch-cpu", cache_path: str | Path | None = None,
                 warmup: int = 10, iters: int = 5, threads: int | None = 1, ctx: Any = None, batch: int = 1,
                 export_dir: str | Path | None = None, statistic: str = "median", max_time_s: float = 0.25,
                 rel_half_width: float = 0.02) -> None:
        check_target(target)
        check_measure(batch, statistic)
        self.statistic = statistic
        self.supernet, self.target, self.batch = supernet, target, int(batch)
        self.space: SearchSpace = supernet.space  # type: ignore[assignment]
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self.warmup, self.iters, self.threads, self.ctx = warmup, iters, threads, ctx
        self.max_time_s, self.rel_half_width = float(max_time_s), float(rel_half_width)
        self.timings: list[tuple[int, bool]] = []
        """(samples, known before a cap) of every timing so far (`timing.time_until_known`)."""
        self.table: dict[str, float] = {}
        self.rounds: dict[str, list[float]] = {}
        """Per-pass values (ms) of the subnets `measure_many` timed, for the noise report."""
        self.unsettled = 0
        """Subnets `measure_many` left with an unconfirmed fastest pass at its pass cap."""
        self.reference: dict[str, Any] | None = None
        """The reference subnet of `measure_many`'s paired passes and its latency (ms), pairs and spread."""
        self.measured = 0
        self.export_s = 0.0
        """Seconds spent exporting/building (ONNX, engines) for measurements so far."""
        self._parts: tempfile.TemporaryDirectory | None = None  # exported parts when there is no export_dir
        if self.cache_path is not None and self.cache_path.exists():
            self.table = self._read_cache(self.cache_path)

    def _read_cache(self, path: Path) -> dict[str, float]:
        """The cached {subnet key: ms} of `path`; {} with a one-line warning when it cannot be trusted."""
        try:
            doc = read_json_artifact(path, "latency cache", "")
            table = doc.get("latency_ms")
            if doc.get("format") != CACHE_FORMAT or doc.get("target") != self.target or not isinstance(table, dict):
                raise ArtifactError(f"latency cache {path} is not a {self.target} latency cache")
            took = (int(doc.get("batch", 1)), doc.get("threads", self.threads), doc.get("statistic", "median"))
            if took != (self.batch, self.threads, self.statistic):
                raise ArtifactError(f"latency cache {path} holds the {took[2]} at batch {took[0]} with {took[1]} "
                                    f"threads, not the {self.statistic} at batch {self.batch} with {self.threads}")
            values = {str(k): float(v) for k, v in table.items()}
            if not all(math.isfinite(v) and v > 0 for v in values.values()):
                raise ArtifactError(f"latency cache {path} holds values that are not latencies")
            if doc.get("sha256") not in (None, _table_sha256(table)):
                raise ArtifactError(f"latency cache {path} was modified since it was written (sha256 of its table)")
            return values
        except (ArtifactError, TypeError, ValueError) as err:
            reason = " ".join(str(err).split()).rstrip("; ")
            print(f"warning: {reason}; ignoring it and measuring again (it is rewritten at the end)", file=sys.stderr)
            return {}

    @staticmethod
    def key(subnet: Subnet) -> str:
        """Cache key of a subnet (its AutoFormer candidate tuple as JSON)."""
        return json.dumps(list(subnet.key()))

    def __call__(self, subnet: Subnet) -> float:
        k = self.key(subnet)
        if k not in self.table:
            distributed = self.ctx is not None and getattr(self.ctx, "distributed", False)
            value = self.measure(subnet) if (not distributed or self.ctx.is_main) else None
            if distributed:
                from taslora_core.distributed import broadcast_object

                value = broadcast_object(value, self.ctx)
            self.table[k] = float(value)  # type: ignore[arg-type]
        return self.table[k]

    def save(self) -> None:
        """Write the cache (rank 0 only under torch.distributed)."""
        if self.cache_path is None or (self.ctx is not None and not getattr(self.ctx, "is_main", True)):
            return
        atomic_write_json(self.cache_path, {
            "format": CACHE_FORMAT, "target": self.target, "batch": self.batch, "threads": self.threads,
            "statistic": self.statistic,
            "host": platform.node(), "space": self.space.name, "warmup": self.warmup, "iters": self.iters,
            "max_time_s": self.max_time_s, "rel_half_width": self.rel_half_width,
            "runtime": runtime_versions(self.target), "latency_ms": self.table, "sha256": _table_sha256(self.table),
        })

    # ------------------------------------------------------------------ measuring
    def measure(self, subnet: Subnet) -> float:
        """Latency (ms, `statistic` of the timed runs) of one forward of `batch` images through the materialised
        subnet on the target."""
        self.measured += 1
        run, cleanup = self._runner(subnet)
        try:
            return self._time(run)
        finally:
            if cleanup is not None:
                cleanup()

    def measure_many(self, subnets: Sequence[Subnet], rounds: int = 3, seed: int = 0,
                     progress: Callable[[str, int, int], None] | None = None,
                     max_rounds: int | None = None, paired: bool = True) -> dict[str, float]:
        """Measure every subnet not in the table yet: runners prepared first (in chunks of PREPARE_CHUNK subnets
        drawn in a shuffled order), then timed in `rounds` passes in a shuffled order, then the subnets whose
        fastest pass is not confirmed by another (`confirmed_value`) timed again, pass after pass, until it is
        or `max_rounds` passes were taken (default 2 * rounds + 1). `paired` (the default): each pass times the
        subnet in interleaved pairs with one reference subnet (the median-FLOPs one of `subnets`, its runner held
        for the whole call; `timing.ratio_until_known`) and keeps the ratio, which a machine whose speed changes
        from second to second (another process's phases) leaves intact; values are the ratios times the
        reference's own `statistic` over all its pairs (`self.reference`). The value kept is `confirmed_value`'s;
        the per-pass values are in `self.rounds` and `self.unsettled` counts the subnets still unconfirmed at
        the cap. `progress(stage, done, total)` reports 'prepare' and 'time' steps (the planned passes; re-timed
        ones are counted in `self.timings`). Returns {key: ms} of all `subnets` (cached ones included). Single
        process only."""
        rounds = max(int(rounds), 1)
        max_rounds = max(int(max_rounds if max_rounds is not None else default_max_rounds(rounds)), rounds)
        todo = list({self.key(s): s for s in subnets if self.key(s) not in self.table}.values())
        rng = random.Random(seed)
        rng.shuffle(todo)  # each chunk mixes the subnets: drift between chunks hits none of them more than others
        reference = median_flops_subnet(self.space, todo) if paired and todo else None
        ref_run, ref_cleanup = self._runner(reference) if reference is not None else (None, None)
        ref_times: list[float] = []
        passes: dict[str, list[float]] = {}
        done = 0
        try:
            for start in range(0, len(todo), PREPARE_CHUNK):
                chunk = todo[start:start + PREPARE_CHUNK]
                prepared: list[tuple[Subnet, Any, Cleanup]] = []
                try:
                    for subnet in chunk:
                        prepared.append((subnet, *self._runner(subnet)))
                        if progress is not None:
                            progress("prepare", start + len(prepared), len(todo))
                    for subnet in chunk:
                        passes[self.key(subnet)] = []
                    for n in range(max_rounds):
                        due = prepared if n < rounds else [
                            p for p in prepared if not confirmed_value(passes[self.key(p[0])])[1]]
                        for subnet, run, _cleanup in rng.sample(due, len(due)):
                            passes[self.key(subnet)].append(
                                self._time(run) if ref_run is None else self._ratio(ref_run, run, ref_times))
                            if n < rounds:
                                done += 1
                                if progress is not None:
                                    progress("time", done, len(todo) * rounds)
                finally:
                    for _subnet, _run, cleanup in prepared:
                        if cleanup is not None:
                            cleanup()
        finally:
            if ref_cleanup is not None:
                ref_cleanup()
        scale = 1.0
        if reference is not None:
            stats = latency_stats(ref_times, batch=self.batch)
            scale = stats[f"{self.statistic}_ms"]
            self.reference = {"subnet": reference.to_dict(), "ms": scale, "pairs": len(ref_times),
                              "p10_ms": stats["p10_ms"], "p90_ms": stats["p90_ms"]}
        for k, values in passes.items():
            self.rounds[k] = [v * scale for v in values]
            self.table[k], settled = confirmed_value(self.rounds[k])
            self.unsettled += not settled
            self.measured += 1
        return {self.key(s): self.table[self.key(s)] for s in subnets}

    def export_ahead(self, subnets: Sequence[Subnet], progress: Callable[[str, int, int], None] | None = None) -> int:
        """Export the ONNX files of `subnets` into `export_dir` without timing anything (e.g. while the machine is
        busy; `measure_many` later reuses them). Returns how many were exported (kept ones are skipped)."""
        if self.export_dir is None or self.target not in ("ort-cpu", "trt"):
            raise LatencyUnavailable("export_ahead needs an export_dir and an ONNX target (ort-cpu, trt)")
        from taslora_deploy.standalone.model import materialize

        exported = 0
        for i, subnet in enumerate(subnets, 1):
            with tempfile.TemporaryDirectory(prefix="taslora-lat-") as tmp:
                model = materialize(self.supernet, subnet).float().cpu().eval()
                spent = self.export_s
                self._onnx_file(model, subnet, Path(tmp))
                exported += self.export_s > spent
            if progress is not None:
                progress("export", i, len(subnets))
        return exported

    def _time(self, run: Any) -> float:
        """The `statistic` (ms per call) of a runner after `warmup` calls, with this table's threads, timed until
        known (`timing.time_until_known`: +-`rel_half_width` at 95%, at least `iters` samples, at most `max_time_s`
        seconds); the sample count and whether a cap ended it are added to `self.timings`."""
        timing = self._known([run], lambda: time_until_known(run, self.statistic, self.rel_half_width,
                                                             self.max_time_s, min_samples=max(int(self.iters), 2)))
        return latency_stats(timing.times, batch=self.batch)[f"{self.statistic}_ms"]

    def _ratio(self, reference: Any, run: Any, reference_times: list[float]) -> float:
        """The median ratio run / reference of interleaved pairs (`timing.ratio_until_known`, this table's
        threads, warm-up, least samples and caps); the reference's seconds per call are added to
        `reference_times`, the timing to `self.timings`."""
        timing = self._known([reference, run], lambda: ratio_until_known(
            reference, run, self.rel_half_width, self.max_time_s, min_samples=max(int(self.iters), 2)))
        reference_times.extend(timing.reference.tolist())  # type: ignore[union-attr]
        return timing.ratio

    def _known(self, runners: list[Any], measure: Callable[[], KnownTiming]) -> KnownTiming:
        """`measure()` after `warmup` calls of each of `runners`, with this table's threads; its sample count and
        whether a cap ended it are added to `self.timings`."""
        with torch_threads(self.threads if self.target == "torch-cpu" else None):
            warm_up(runners, min_calls=self.warmup)
            timing = measure()
        self.timings.append((timing.samples, timing.stopped == "known"))
        return timing

    def compare(self, slower: Subnet, faster: Subnet, warmup_s: float = 0.3, iters: int = 60) -> dict[str, float]:
        """Re-time two subnets interleaved (AB, BA, ...; `timing.interleaved_latency`, the zero-overhead check's
        discipline) to tell a real latency difference from noise; returns the per-pair ratios slower/faster
        (ratio_median, ratio_p10, ratio_p90). Not cached: it is asked only for a few suspicious pairs."""
        run_a, done_a = self._runner(faster)
        run_b, done_b = self._runner(slower)
        try:
            with torch_threads(self.threads if self.target == "torch-cpu" else None):
                stats = interleaved_latency(run_a, run_b, warmup_s=warmup_s, iters=iters)
            return {k: stats[k] for k in ("ratio_median", "ratio_p10", "ratio_p90")}
        finally:
            for done in (done_a, done_b):
                if done is not None:
                    done()

    def _runner(self, subnet: Subnet) -> tuple[Any, Cleanup]:
        """(zero-arg runner of one `batch` through the materialised subnet on the target, cleanup or None)."""
        from taslora_deploy.standalone.model import materialize

        model = materialize(self.supernet, subnet).float().cpu().eval()
        shape = (self.space.in_chans, self.space.img_size, self.space.img_size)
        if self.target in ("ort-cpu", "trt"):
            return self._onnx(model, subnet, shape)
        from taslora_deploy.runners import torch_runner

        device = "cuda" if self.target == "torch-cuda" else "cpu"
        return torch_runner(model, self.batch, shape, device=device), None

    def _onnx(self, model: torch.nn.Module, subnet: Subnet, shape: tuple[int, int, int]) -> tuple[Any, Cleanup]:
        """A runner of the subnet's ONNX file: onnxruntime on the CPU, or a TensorRT engine built from it."""
        from taslora_deploy.runners import ort_runner, trt_runner

        tmp = tempfile.TemporaryDirectory(prefix="taslora-lat-")
        try:
            path = self._onnx_file(model, subnet, Path(tmp.name))
            if self.target == "trt":
                from taslora_deploy.trt_engine import TrtRunner, build_engine

                b = self.batch
                plan = _timed_into(self, lambda: build_engine(path, Path(tmp.name) / "model.plan", shape, min_batch=b,
                                                              opt_batch=b, max_batch=b))
                run = trt_runner(TrtRunner(plan), b, input_shape=shape)
            else:
                run = ort_runner(path, self.batch, input_shape=shape, device="cpu", threads=self.threads)
        except Exception as err:  # noqa: BLE001 - reported as one line
            tmp.cleanup()
            raise LatencyUnavailable(f"ONNX export/{'TensorRT' if self.target == 'trt' else 'onnxruntime'} failed "
                                     f"for a candidate: {str(err).splitlines()[0]}") from None
        return run, tmp.cleanup

    def _onnx_file(self, model: torch.nn.Module, subnet: Subnet, tmp: Path) -> Path:
        """The subnet's ONNX file (dynamic batch), assembled from exported parts (`measure_onnx`: the same graph
        as a whole export, in milliseconds once its parts are kept): into `tmp`, or kept in / reused from
        `export_dir` (parts under its ``parts/``; without `export_dir` in a folder that lives as long as the
        table)."""
        from taslora_deploy.measure_onnx import assemble_onnx

        if self.export_dir is None:
            if self._parts is None:
                self._parts = tempfile.TemporaryDirectory(prefix="taslora-parts-")
            return _timed_into(self, lambda: assemble_onnx(model, tmp / MODEL_ONNX, self._parts.name))
        name = hashlib.sha256(f"{torch.__version__}|{space_hash(self.space)}|{self.key(subnet)}".encode()).hexdigest()
        kept = self.export_dir / f"{name[:24]}.onnx"  # written atomically: a kept file is whole
        if not kept.is_file():
            kept.parent.mkdir(parents=True, exist_ok=True)
            _timed_into(self, lambda: assemble_onnx(model, kept, self.export_dir / PARTS_DIR))
        return kept


def _timed_into(table: LatencyTable, make: Callable[[], Path]) -> Path:
    """Run `make` (an export or an engine build) and add its seconds to `table.export_s`."""
    start = time.perf_counter()
    try:
        return make()
    finally:
        table.export_s += time.perf_counter() - start
