"""`taslora export --family PARETO_JSON`: export the members of a Pareto front and print the family table.

`export_cmd` (cmd_export.py) parses the options and hands over here when --family is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from taslora_cli.app import console, err_console, fail

if TYPE_CHECKING:
    from taslora_deploy.family import FamilyResult
    from taslora_deploy.pipeline import ExportOptions


def run_family_export(pareto: Path | None, ckpt: Path | None, out: Path | None, members: int | None,
                      options: ExportOptions, eval_test: bool, workdir: Path, subnet: Path | None = None) -> None:
    """Export the family, print its table and where its files are; exit 1 when any member failed."""
    from taslora_deploy.family import export_family

    if pareto is None:
        raise fail("--members and --eval-test go with --family PARETO_JSON (the pareto.json of `taslora search --pareto`)")
    if subnet is not None:
        raise fail(f"--subnet {subnet} and --family {pareto} exclude each other; pass one of them")
    result = export_family(pareto, ckpt, workdir=workdir, out=out, members=members, options=options,
                           eval_test=eval_test, log=console.print)
    console.print(family_table(result))
    console.print(f"family: {result.json_path}, {result.md_path.name}, {result.png_path.name}")
    if not result.ok:
        for m in result.failed:
            err_console.print(f"[bold red]error:[/] {escape(f'{m.folder}: {m.failed_step}: {m.error}')}",
                              highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def family_table(result: FamilyResult) -> Table:
    """The family as a rich table: one row per member (the columns of family.md)."""
    from taslora_deploy.family import TABLE_COLUMNS, member_row

    table = Table(title=f"family ({len(result.members)} members; latency on {result.runtime}, "
                        f"batch {result.latency_batch})")
    for name in TABLE_COLUMNS:
        table.add_column(name, justify="left" if name in ("member", "status") else "right")
    for m in result.members:
        *cells, _ = member_row(m)
        table.add_row(*cells, "[green]ok[/]" if m.ok else f"[red]failed[/] ({escape(str(m.failed_step))})")
    return table
