"""Plots written by taslora commands (matplotlib, Agg backend: no display needed). A plain module of functions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from taslora_core.atomic import atomic_write  # noqa: E402


def _save(fig: Any, path: str | Path, **savefig_kw: Any) -> Path:
    """Write the figure to `path` as PNG (atomically), then close it."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, **savefig_kw))
    finally:
        plt.close(fig)


def training_curve_points(run: str | Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl as flat curve points: train loss per logged step, validation per epoch end."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    points: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        step = rec.get("global_step")
        if rec.get("type") == "step" and "loss" in rec:
            points.append({"step": step, "train loss": rec["loss"]})
        elif rec.get("type") == "epoch":
            for name, res in (rec.get("val") or {}).items():
                if isinstance(res, dict) and "loss" in res:
                    points.append({"step": step, f"val loss ({name})": res["loss"], f"val top-1 ({name})": res["top1"]})
    return points


def _constraint_lines(ax, lo: float | None, hi: float | None, scale: float, label: str) -> None:
    for value, name in ((hi, "max"), (lo, "min")):
        if value is not None:
            ax.axvline(value / scale, color="tab:red", linestyle="--", linewidth=1.2, label=f"{label} {name}")


def plot_fitness_vs_flops(
    history: Sequence[dict[str, Any]],
    constraints: Any,
    best: dict[str, Any] | None,
    path: str | Path,
    metric: str = "fitness",
    title: str | None = None,
) -> Path:
    """Scatter of every evaluated subnet's fitness against its FLOPs (the constraint's counter), coloured by
    generation, with the FLOPs bounds as dashed lines and the chosen subnet starred. When params bounds are
    set, a second panel shows fitness against params with those bounds. Returns `path`."""
    path = Path(path)
    counter = getattr(constraints, "counter", "autoformer")
    flops_key = f"flops_{counter}"
    has_params = getattr(constraints, "params_max", None) is not None or getattr(constraints, "params_min", None) is not None
    panels = 2 if has_params else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.6), squeeze=False)
    gens = [r.get("generation", 0) for r in history]
    fit = [r["fitness"] for r in history]
    specs = [(axes[0][0], flops_key, 1e6, f"FLOPs ({counter}), M", "flops", "FLOPs")]
    if has_params:
        specs.append((axes[0][1], "params", 1e6, "params, M", "params", "params"))
    for ax, key, scale, xlabel, cname, label in specs:
        xs = [r[key] / scale for r in history]
        sc = ax.scatter(xs, fit, c=gens, cmap="viridis", s=14, alpha=0.8, edgecolors="none")
        _constraint_lines(ax, getattr(constraints, f"{cname}_min", None), getattr(constraints, f"{cname}_max", None),
                          scale, label)
        if best is not None:
            ax.scatter([best[key] / scale], [best["fitness"]], marker="*", s=260, color="tab:orange",
                       edgecolors="black", linewidths=0.8, zorder=5, label="chosen subnet")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (lower is better)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    bar = fig.colorbar(sc, ax=axes[0][-1], label="generation")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    fig.suptitle(title or f"evolutionary search: {len(history)} subnets evaluated")
    fig.tight_layout()
    return _save(fig, path)


def plot_similarity_heatmaps(matrices: dict[str, Any], path: str | Path, title: str = "penultimate-feature cosine similarity") -> Path:
    """Side-by-side heatmaps of (S, S) subnet-similarity matrices (feature collapse), one per model."""
    import numpy as np

    names = list(matrices)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = np.asarray(matrices[name], dtype=float)
        n = m.shape[0]
        off = (m.sum() - np.trace(m)) / max(n * n - n, 1)
        im = ax.imshow(m, vmin=min(0.0, float(m.min())), vmax=1.0, cmap="viridis")
        ax.set_title(f"{name}\nmean off-diagonal {off:.3f}")
        ax.set_xlabel("subnet")
        ax.set_ylabel("subnet")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_routing_heatmap(probs: Any, row_labels: Sequence[str], layer_labels: Sequence[str], path: str | Path,
                         title: str = "routing weights") -> Path:
    """Heatmap of routing weights (rows x layers x experts): one panel per layer, rows x experts."""
    import numpy as np

    p = np.asarray(probs, dtype=float)
    rows, layers, experts = p.shape
    fig, axes = plt.subplots(1, layers, figsize=(3.2 * layers + 1, 0.32 * rows + 1.8), squeeze=False, sharey=True)
    for i, ax in enumerate(axes[0]):
        im = ax.imshow(p[:, i, :], vmin=0.0, vmax=1.0, cmap="magma", aspect="auto")
        ax.set_title(layer_labels[i])
        ax.set_xlabel("expert")
        ax.set_xticks(range(experts))
        ax.tick_params(axis="x", labelsize=6)
    axes[0][0].set_yticks(range(rows))
    axes[0][0].set_yticklabels(row_labels, fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02, pad=0.02)
    fig.suptitle(title)
    return _save(fig, path, bbox_inches="tight")


def plot_training_curves(runs: dict[str, Sequence[dict[str, Any]]], path: str | Path,
                         keys: Sequence[str] = ("loss", "val_loss", "val_top1")) -> Path:
    """Training curves from metrics records (one dict per logged step/epoch): one panel per key, one line per run.

    The x axis is the record's `step` (or `epoch`) field; records lacking a key are skipped for that panel.
    """
    present = [k for k in keys if any(k in r for recs in runs.values() for r in recs)]
    if not present:
        raise ValueError(f"no metrics among {list(keys)} to plot")
    fig, axes = plt.subplots(1, len(present), figsize=(4.6 * len(present), 3.6), squeeze=False)
    for ax, key in zip(axes[0], present):
        for name, recs in runs.items():
            pts = [(r.get("step", r.get("epoch")), r[key]) for r in recs if key in r and r.get("step", r.get("epoch")) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=name, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_family(points: Sequence[dict[str, Any]], path: str | Path, xlabel: str = "latency p50 (ms)",
                ylabel: str = "validation loss", title: str = "exported family: accuracy vs measured latency") -> Path:
    """Scatter of a family export: one labelled point per member (`label`, `x` = measured latency, `y` =
    accuracy, `ok`), failed members as red crosses; members without both numbers are listed in a note."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    shown = [p for p in points if p.get("x") is not None and p.get("y") is not None]
    x_mid = (min(p["x"] for p in shown) + max(p["x"] for p in shown)) / 2 if shown else 0.0
    for p in shown:
        ok = bool(p.get("ok", True))
        ax.scatter([p["x"]], [p["y"]], marker="o" if ok else "x", s=40, color="tab:blue" if ok else "tab:red",
                   zorder=3)
        right_half = len(shown) > 1 and p["x"] > x_mid  # labels point inwards, so none leaves the axes
        ax.annotate(str(p.get("label", "")), (p["x"], p["y"]), textcoords="offset points", fontsize=7,
                    xytext=(-5, 5) if right_half else (5, 5), ha="right" if right_half else "left")
    ordered = sorted((p for p in shown if p.get("ok", True)), key=lambda p: p["x"])
    if len(ordered) > 1:
        ax.plot([p["x"] for p in ordered], [p["y"] for p in ordered], color="tab:blue", linewidth=0.8, alpha=0.5)
    missing = [str(p.get("label", "")) for p in points if p not in shown]
    if missing:
        ax.text(0.01, 0.01, "not measured: " + ", ".join(missing), transform=ax.transAxes, fontsize=7,
                color="tab:red", va="bottom")
    ax.set_xlabel(xlabel)
    ax.margins(x=0.08, y=0.1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_bench(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "latency vs batch size") -> Path:
    """Median latency against batch size, one line per benchmarked series (artifact, CUDA graph on/off), log-log,
    with p10-p90 error bars (`taslora bench` rows: `artifact`, `batch`, `p50_ms`, `p10_ms`, `p90_ms`)."""
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        name = f"{r['artifact']} [{r.get('precision') or r.get('runtime')}]" + (" +CUDA graph" if r.get("cuda_graph") else "")
        series.setdefault(name, []).append(r)
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for name, pts in series.items():
        pts = sorted(pts, key=lambda r: r["batch"])
        xs = [r["batch"] for r in pts]
        p50 = [r.get("p50_ms", r["median_ms"]) for r in pts]
        lo = [max(m - r.get("p10_ms", r["min_ms"]), 0.0) for m, r in zip(p50, pts)]
        hi = [max(r["p90_ms"] - m, 0.0) for m, r in zip(p50, pts)]
        ax.errorbar(xs, p50, yerr=[lo, hi], marker="o", capsize=3, linewidth=1.3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    batches = sorted({r["batch"] for r in rows})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency p50, ms (bars: p10-p90)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_pareto(
    history: Sequence[dict[str, Any]],
    front: Sequence[dict[str, Any]],
    pick: dict[str, Any] | None,
    objectives: Sequence[str],
    path: str | Path,
    counter: str = "autoformer",
    title: str | None = None,
) -> Path:
    """A Pareto search in one panel: every evaluated subnet in grey, the front (non-dominated members) as a
    highlighted staircase, the single-objective pick (best.json) starred; x = the cost objective, y = the
    quality objective, both lower is better. Returns `path`."""
    from taslora_core.search.objectives import objective_value

    quality, cost = objectives[0], objectives[-1]
    scale, unit = {"flops": (1e6, f"FLOPs ({counter}), M"), "params": (1e6, "params, M"),
                   "latency": (1.0, "measured latency, ms (batch 1)")}[cost]

    def xy(records: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
        pts = [(objective_value(r, cost, counter) / scale, objective_value(r, quality, counter)) for r in records]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    xs, ys = xy(history)
    ax.scatter(xs, ys, s=12, color="0.7", edgecolors="none", label=f"evaluated ({len(history)})")
    fx, fy = xy(front)
    ax.step(fx, fy, where="post", color="tab:blue", linewidth=1.2, alpha=0.7)
    ax.scatter(fx, fy, s=34, color="tab:blue", edgecolors="black", linewidths=0.5, zorder=4,
               label=f"Pareto front ({len(front)})")
    if pick is not None:
        px, py = xy([pick])
        ax.scatter(px, py, marker="*", s=260, color="tab:orange", edgecolors="black", linewidths=0.8, zorder=5,
                   label="single-objective pick (best.json)")
    ax.set_xlabel(unit)
    ax.set_ylabel(f"validation {'loss' if quality == 'loss' else 'top-1 error'} (lower is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or f"Pareto search: {quality} vs {cost}")
    fig.tight_layout()
    return _save(fig, path)
