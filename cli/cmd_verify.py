"""`taslora verify EXPORT_DIR`: re-check an export as shipped (hashes, shapes, ONNX parity, engine, structure)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from taslora_cli.app import app, console, fail, handle_errors

_STYLE = {"pass": "green", "fail": "bold red", "skipped": "yellow"}


@app.command("verify")
@handle_errors
def verify_cmd(
    export_dir: Annotated[Path, typer.Argument(help="Export folder written by `taslora export`.")],
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the random inputs (default: fresh).")] = None,
    tolerance: Annotated[Optional[float], typer.Option(
        "--tolerance", help="Max abs diff of model.onnx vs the safetensors model (default: the export's).")] = None,
) -> None:
    """Re-check an export folder before deploying it; exit 0 only when every check passes."""
    from taslora_deploy.verify import verify

    result = verify(export_dir, seed=seed, onnx_tolerance=tolerance)
    table = Table(title=f"verify {export_dir} (random inputs: seed {result.seed})")
    for col in ("check", "result", "detail"):
        table.add_column(col, overflow="fold")
    for check in result.checks:
        table.add_row(escape(check.name), f"[{_STYLE[check.status]}]{check.status}[/]", escape(check.detail))
    console.print(table)
    if not result.ok:
        first = result.failures[0]
        more = f" (and {len(result.failures) - 1} more failed checks)" if len(result.failures) > 1 else ""
        raise fail(f"verify failed: {first.name}: {first.detail}{more}")
    console.print(f"all {sum(c.status == 'pass' for c in result.checks)} checks passed "
                  f"({sum(c.status == 'skipped' for c in result.checks)} skipped)")
