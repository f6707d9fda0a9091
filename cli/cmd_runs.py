"""`taslora runs`: what the workspace holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from taslora_cli.app import DEFAULT_WORKDIR_PATH, WorkdirOpt, app, console, fail, handle_errors
from taslora_core.artifact_read import ArtifactError, read_json_artifact
from taslora_core.workspace import BEST_JSON, KINDS, SUMMARY_JSON, runs
from taslora_deploy.artifacts import REPORT


def key_numbers(kind: str, path: Path, damaged: list[str] | None = None) -> str:
    """A short 'key=value' summary of a run from its summary.json / best.json / report.json; the message of
    each damaged file is appended to `damaged` (the run is listed without its numbers)."""
    doc: dict[str, Any] = {}
    for name in (SUMMARY_JSON, BEST_JSON if kind == "searches" else "", REPORT if kind == "exports" else ""):
        if name and (path / name).exists():
            try:
                doc = {**read_json_artifact(path / name, "run record", "restore it or delete the run folder"), **doc}
            except ArtifactError as err:
                if damaged is not None:
                    damaged.append(str(err))
                continue
    if kind == "exports" and "parity" in doc:
        parts = [f"ok={doc.get('ok')}"]
        lat = doc.get("zero_overhead_latency") or {}
        if "ratio_median" in lat:
            parts.append(f"latency ratio={lat['ratio_median']:.3f}")
        return ", ".join(parts)
    shown = []
    for key, value in doc.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or key in ("ckpt", "format", "split"):
            continue
        shown.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        if len(shown) == 5:
            break
    return ", ".join(shown)


@app.command("runs")
@handle_errors
def runs_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    all_runs: Annotated[bool, typer.Option("--all", help="Also list unfinished runs (interrupted training, failed exports).")] = False,
) -> None:
    """List the supernets, MoLE runs, searches and exports of the workspace with their key numbers."""
    table = Table(title=f"workspace {workdir}")
    for col in ("kind", "run", "finished", "key numbers"):
        table.add_column(col)
    count = 0
    damaged: list[str] = []
    for kind in KINDS:
        finished = {r.path for r in runs(workdir, kind)}
        for run in runs(workdir, kind, finished_only=not all_runs):
            table.add_row(kind, run.name, "yes" if run.path in finished else "no", key_numbers(kind, run.path, damaged))
            count += 1
    if count == 0:
        console.print(f"workspace {workdir} holds no runs yet; start with `taslora quickstart` or `taslora supernet train`")
        return
    console.print(table)
    if damaged:
        raise fail(damaged[0] + (f" (and {len(damaged) - 1} more damaged files)" if len(damaged) > 1 else ""))
