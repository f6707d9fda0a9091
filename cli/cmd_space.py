"""`taslora space` and `taslora flops`: inspect search spaces and count subnets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from taslora_cli.app import app, console, fail, handle_errors
from taslora_core.complexity import COUNTERS, flops, format_amount, params
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, smallest_subnet


@app.command("space")
@handle_errors
def space_cmd(
    name: Annotated[str, typer.Argument(help="Preset (fmnist, autoformer-t/s/b) or a YAML file (ours or AutoFormer's).")] = "fmnist",
) -> None:
    """Print a search space, its architecture groups (one expert each) and its FLOPs/params range."""
    space = SearchSpace.resolve(name)
    table = Table(title=f"search space {space.name}", show_header=False)
    table.add_row("image", f"{space.img_size}x{space.img_size}x{space.in_chans}, patch {space.patch_size}, {space.num_classes} classes")
    table.add_row("supernet (allocated)", f"embed {space.super_embed_dim}, depth {space.super_depth}, heads {space.super_num_heads}, MLP ratio {space.super_mlp_ratio}")
    table.add_row("head dim / max rel. pos.", f"{space.head_dim} / {space.max_relative_position}")
    table.add_row("embed dims", ", ".join(map(str, space.embed_dims)))
    table.add_row("depths", ", ".join(map(str, space.depths)))
    table.add_row("heads", ", ".join(map(str, space.num_heads)))
    table.add_row("MLP ratios", ", ".join(map(str, space.mlp_ratios)))
    groups = space.groups()
    table.add_row("groups = experts K", str(len(groups)))
    lo, hi = smallest_subnet(space), largest_subnet(space)
    for counter in COUNTERS:
        table.add_row(f"FLOPs ({counter})", f"{format_amount(flops(space, lo, counter))} .. {format_amount(flops(space, hi, counter))}")
    table.add_row("params", f"{format_amount(params(space, lo))} .. {format_amount(params(space, hi))}")
    console.print(table)
    gt = Table(title="architecture groups (expert g serves group g)")
    for col in ("g", "heads", "MLP ratio", "embed"):
        gt.add_column(col, justify="right")
    for i, g in enumerate(groups):
        gt.add_row(str(i), str(g.num_heads), str(g.mlp_ratio), str(g.embed_dim))
    console.print(gt)


@app.command("flops")
@handle_errors
def flops_cmd(
    subnet_path: Annotated[Path, typer.Argument(help="Subnet JSON (ours, or a search's best.json) or AutoFormer subnet YAML.")],
    space_name: Annotated[str | None, typer.Option("--space", help="Search space preset or YAML; default: the one recorded in the file.")] = None,
) -> None:
    """Print both FLOPs counters and the parameter count of one subnet.

    FLOPs 'autoformer' is AutoFormer's get_complexity (multiply-adds, what `search --flops` uses by default);
    'macs' is the true multiply-accumulate count of the exported model for one image.
    """
    subnet = Subnet.load(subnet_path)
    space = _space_for(subnet_path, space_name)
    subnet.check_fits(space)
    table = Table(title=f"subnet {subnet_path.name} in {space.name}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for counter in COUNTERS:
        table.add_row(f"FLOPs ({counter})", format_amount(flops(space, subnet, counter)))
    table.add_row("params", f"{params(space, subnet):,}")
    table.add_row("in search space", "yes" if subnet.in_space(space) else "no (fits the supernet)")
    console.print(table)


def _space_for(path: Path, name: str | None) -> SearchSpace:
    if name:
        return SearchSpace.resolve(name)
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and isinstance(doc.get("space"), dict):
            return SearchSpace.from_dict(doc["space"])
        if isinstance(doc, dict) and isinstance(doc.get("space"), str):
            return SearchSpace.resolve(doc["space"])
    raise fail(f"{path} does not record its search space; pass --space NAME_OR_YAML")
