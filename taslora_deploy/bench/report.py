"""What `taslora bench` reports: bench.json, the results table, and ratios against a baseline artifact.

bench.json stays what it always was, a JSON list with one row per artifact, batch size and variant (so older
readers keep working); each row now also describes its artifact and holds its ratios against the baseline:

* ``artifact`` (the unique label), ``path``, ``kind``, ``precision``, ``size_bytes``;
* ``runtime``, ``provider``, ``device``, ``batch``, ``input_shape``, ``dtype``, ``threads``, ``cuda_graph``;
* latency statistics in ms of the host wall clock (``mean_ms``, ``median_ms`` = ``p50_ms``, ``p10_ms``,
  ``p90_ms``, ``p95_ms``, ``p99_ms``, ``min_ms``, ``max_ms``, ``std_ms``, ``cv``, ``iters``, ``total_s``),
  ``throughput_ips`` (images/s) and ``throughput_qps`` (queries/s, one batch per query);
* ``gpu_compute``: the same statistics of the GPU compute time (CUDA events on the runner's stream: torch and
  TensorRT on CUDA), or None (CPU; onnxruntime, whose stream is its own);
* ``environment``: versions and hardware;
* ``vs_baseline`` (with ``--compare``): ``baseline`` label, ``ratio_of_medians`` (this p50 / the baseline's
  p50, < 1 is faster), ``speedup`` (its inverse), ``throughput_ratio`` and ``paired``: the interleaved A/B
  measurement of the timing loop (per-pair ratio median, p10, p90) or None.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from taslora_core.atomic import atomic_write_text, json_default

__all__ = ["series_key", "compare_ratios", "attach_ratios", "bench_table", "ratio_table", "write_json",
           "find_baseline"]


def series_key(row: Mapping[str, Any]) -> tuple[str, bool]:
    """What one measured curve is: (artifact label, CUDA graph on)."""
    return str(row["artifact"]), bool(row.get("cuda_graph", False))


def _series_name(row: Mapping[str, Any]) -> str:
    return f"{row['artifact']} (CUDA graph)" if row.get("cuda_graph") else str(row["artifact"])


def find_baseline(compare: str | os.PathLike, artifacts: Sequence[Any]) -> Any:
    """The artifact (an :class:`~taslora_deploy.bench.describe.ArtifactInfo`) that ``compare`` names by its
    label or its path; ValueError listing the labels when none does."""
    text = str(compare)
    wanted = os.path.abspath(text)
    for info in artifacts:
        if text in (info.label, info.label.rstrip("/"), info.path) or os.path.abspath(info.path) == wanted:
            return info
    labels = ", ".join(info.label for info in artifacts)
    raise ValueError(f"--compare {text!r} names none of the benchmarked artifacts ({labels}); pass one of these "
                     "labels or paths")


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None  # None, not NaN: bench.json is strict JSON


def compare_ratios(rows: Sequence[Mapping[str, Any]], baseline: str,
                   paired: Mapping[tuple[str, bool, int], Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every other series against ``baseline`` (a label) at each batch size both were measured at.

    From the recorded statistics: ``ratio_of_medians`` = p50 / baseline p50, ``speedup`` = its inverse,
    ``throughput_ratio`` = images/s over the baseline's. ``paired`` maps (label, cuda_graph, batch) to an
    interleaved A/B report of :func:`taslora_deploy.timing.interleaved_latency` (A = baseline).
    """
    base = {r["batch"]: r for r in rows if series_key(r) == (baseline, False)}
    if not base:
        raise ValueError(f"no measurement of the baseline {baseline!r} (without CUDA graph) to compare against")
    out: list[dict[str, Any]] = []
    for r in rows:
        ref = base.get(r["batch"])
        if ref is None or r is ref:
            continue
        label, graph = series_key(r)
        pair = (paired or {}).get((label, graph, r["batch"]))
        ratio = _ratio(r["median_ms"], ref["median_ms"])
        out.append({
            "batch": r["batch"],
            "artifact": label,
            "cuda_graph": graph,
            "baseline": baseline,
            "ratio_of_medians": ratio,
            "speedup": _ratio(ref["median_ms"], r["median_ms"]),
            "throughput_ratio": _ratio(r["throughput_ips"], ref["throughput_ips"]),
            "paired": None if pair is None else {k: pair[k] for k in (
                "ratio_median", "ratio_p10", "ratio_p90", "ratio_of_medians", "median_a_ms", "median_b_ms", "iters")},
        })
    return out


def attach_ratios(rows: Sequence[dict[str, Any]], ratios: Sequence[Mapping[str, Any]]) -> None:
    """Store each ratio in its row as ``vs_baseline`` (in place)."""
    by_key = {(r["artifact"], r["cuda_graph"], r["batch"]): r for r in ratios}
    for row in rows:
        ratio = by_key.get((*series_key(row), row["batch"]))
        if ratio is not None:
            row["vs_baseline"] = {k: v for k, v in ratio.items() if k not in ("artifact", "cuda_graph", "batch")}


def _fmt_x(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}x"


def _runtime_text(row: Mapping[str, Any]) -> str:
    """e.g. 'onnxruntime CPU', 'torch cuda:0 +graph', 'tensorrt'."""
    provider = str(row.get("provider") or "").replace("ExecutionProvider", "")
    text = str(row["runtime"]) + (f" {provider}" if provider and provider.lower() != str(row["runtime"]).lower() else "")
    return text + (" +graph" if row.get("cuda_graph") else "")


def bench_table(results: Sequence[Mapping[str, Any]], title: str = "Latency benchmark"):
    """A rich Table with artefacts side by side per batch size.

    Rows are grouped by batch. The last column is ``vs <baseline>`` (latency ratio of medians; the paired
    ratios are in :func:`ratio_table`) when rows carry ``vs_baseline``, else ``vs first``: the median latency
    relative to the first artefact (in input order) benchmarked at that batch size. A ``GPU p50`` column appears when
    GPU compute time was measured.
    """
    from rich.table import Table

    baseline = next((r["vs_baseline"]["baseline"] for r in results if r.get("vs_baseline")), None)
    with_gpu = any(r.get("gpu_compute") for r in results)
    columns = ["batch", "artifact", "kind", "precision", "runtime", "mean ms", "p50 ms", "p90 ms", "p99 ms", "min ms",
               "max ms", "img/s", "qps"]
    if with_gpu:
        columns.append("GPU p50 ms")
    columns.append(f"vs {baseline}" if baseline else "vs first")
    table = Table(title=title)
    for col in columns:
        text = col in ("artifact", "kind", "precision", "runtime")
        table.add_column(col, justify="left" if text else "right", no_wrap=text)
    order = {id(r): i for i, r in enumerate(results)}
    first_p50: dict[int, float] = {}
    for r in sorted(results, key=lambda r: (r["batch"], order[id(r)])):
        cells = [str(r["batch"]), str(r["artifact"]), str(r.get("kind") or ""), str(r.get("precision") or ""),
                 _runtime_text(r)]
        cells += [f"{r[k]:.3f}" for k in ("mean_ms", "median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")]
        qps = r.get("throughput_qps", r["throughput_ips"] / r["batch"])
        cells += [f"{r['throughput_ips']:.1f}", f"{qps:.1f}"]
        if with_gpu:
            gpu = r.get("gpu_compute")
            cells.append(f"{gpu['median_ms']:.3f}" if gpu else "-")
        if baseline:
            vs = r.get("vs_baseline")
            cells.append("baseline" if series_key(r) == (baseline, False) else _fmt_x(vs and vs["ratio_of_medians"]))
        else:
            ref = first_p50.setdefault(r["batch"], r["median_ms"])
            cells.append(f"{r['median_ms'] / ref:.3f}x" if ref > 0 else "-")
        table.add_row(*cells)
    return table


def ratio_table(ratios: Sequence[Mapping[str, Any]]):
    """A rich Table of :func:`compare_ratios`: one row per batch size and compared series."""
    from rich.table import Table

    base = ratios[0]["baseline"] if ratios else "baseline"
    table = Table(title=f"latency ratios vs {base} (< 1 is faster)")
    for col in ("batch", "artifact", "p50 ratio", "speed-up", "img/s ratio", "paired ratio (p10-p90)"):
        table.add_column(col, justify="left" if col == "artifact" else "right")
    for r in sorted(ratios, key=lambda r: r["batch"]):
        p = r.get("paired")
        table.add_row(str(r["batch"]), _series_name(r), _fmt_x(r["ratio_of_medians"]), _fmt_x(r["speedup"], 2),
                      _fmt_x(r["throughput_ratio"]),
                      f"{p['ratio_median']:.3f} ({p['ratio_p10']:.3f}-{p['ratio_p90']:.3f})" if p else "-")
    return table


def _json_default(obj: Any):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (torch.device, torch.dtype)):
        return str(obj)
    return json_default(obj)


def write_json(results: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write ``results`` (a list of dicts) as JSON, atomically (``taslora_core.atomic``)."""
    text = json.dumps(list(results), indent=2, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")
