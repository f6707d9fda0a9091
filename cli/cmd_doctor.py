"""`taslora doctor`: one screen of what this machine can do and what is missing (parses options and prints)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from taslora_cli.app import DEFAULT_WORKDIR_PATH, WorkdirOpt, app, console, handle_errors

_STYLE = {"ok": "green", "missing": "yellow", "fail": "bold red", "info": "cyan"}


@app.command("doctor")
@handle_errors
def doctor_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as one JSON object ({ok, checks: [{name, "
                                          "status, detail, fix}]}) instead of the table; same exit code.")] = False,
) -> None:
    """What this machine can run and what is missing, with the fix for each: Python and packages, torch and CUDA
    devices, onnxruntime (providers; both wheels installed?), TensorRT and Polygraphy, the Fashion-MNIST data, the
    workspace's latest runs, the latency targets `search` can use here.

    Exit 0 when the default path (quickstart on Fashion-MNIST, ONNX on onnxruntime's CPU provider) can run here,
    1 otherwise. Missing optional parts (CUDA, TensorRT) are listed but do not fail.
    """
    from taslora_deploy.doctor import diagnose

    result = diagnose(workdir)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
        if not result.ok:
            raise typer.Exit(1)
        return
    table = Table(title="taslora doctor")
    for col in ("check", "status", "what this machine has", "fix"):
        table.add_column(col, overflow="fold")
    for c in result.checks:
        table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", escape(c.detail), escape(c.fix))
    console.print(table)
    if result.ok:
        console.print("[green]the default path can run here[/] (quickstart on Fashion-MNIST, ONNX on the CPU)")
        return
    failed = ", ".join(c.name for c in result.checks if c.status == "fail")
    console.print(f"[bold red]the default path cannot run here[/]: fix {escape(failed)} (the 'fail' rows above)")
    raise typer.Exit(1)
