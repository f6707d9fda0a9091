"""`taslora verify EXPORT_DIR`: re-check an export as shipped (hashes, shapes, ONNX parity, engine, structure)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from taslora_cli.app import app, console, fail, handle_errors
from taslora_deploy.certificate.latency import RECHECK_TEST

_STYLE = {"pass": "green", "fail": "bold red", "skipped": "yellow"}


@app.command("verify")
@handle_errors
def verify_cmd(
    export_dir: Annotated[Path, typer.Argument(help="Export folder written by `taslora export`.")],
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the random inputs (default: fresh).")] = None,
    tolerance: Annotated[Optional[float], typer.Option(
        "--tolerance", help="Max abs diff of model.onnx vs the safetensors model (default: the export's).")] = None,
    latency: Annotated[bool, typer.Option("--latency", help="Also re-run the latency test of certificate.json here and print it next to the certified verdict (different, i.e. slower beyond the margin, fails; inconclusive is skipped).")] = False,
    time_s: Annotated[float, typer.Option("--time-s", help="With --latency: seconds of timed pairs per batch size at most.")] = RECHECK_TEST.time_limit_s,
    threads: Annotated[Optional[int], typer.Option("--threads", help="onnxruntime intra-op threads.")] = None,
) -> None:
    """Re-check an export folder before deploying it (hashes, parity, structure, its certificates); exit 0 only
    when every check passes."""
    from taslora_deploy.verify import verify

    config = RECHECK_TEST.with_options(time_limit_s=time_s) if latency else None
    result = verify(export_dir, seed=seed, onnx_tolerance=tolerance, latency=latency, latency_config=config,
                    threads=threads, log=console.print)
    table = Table(title=f"verify {export_dir} (random inputs: seed {result.seed})")
    for col in ("check", "result", "detail"):
        table.add_column(col, overflow="fold")
    for check in result.checks:
        table.add_row(escape(check.name), f"[{_STYLE[check.status]}]{check.status}[/]", escape(check.detail))
    console.print(table)
    if result.latency is not None:
        from taslora_cli.certificate_tables import side_by_side_table
        from taslora_deploy.certificate.check import latency_side_by_side

        console.print(side_by_side_table(latency_side_by_side(result.certified_latency, result.latency),
                                         "latency, A = no-LoRA baseline, B = folded (onnxruntime CPU)"))
    if not result.ok:
        first = result.failures[0]
        more = f" (and {len(result.failures) - 1} more failed checks)" if len(result.failures) > 1 else ""
        raise fail(f"verify failed: {first.name}: {first.detail}{more}")
    console.print(f"all {sum(c.status == 'pass' for c in result.checks)} checks passed "
                  f"({sum(c.status == 'skipped' for c in result.checks)} skipped)")
