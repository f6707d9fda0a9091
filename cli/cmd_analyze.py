"""`taslora analyze collapse` and `taslora analyze routing`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from taslora_cli.app import DEFAULT_WORKDIR_PATH, WorkdirOpt, analyze_app, console, fail, handle_errors


def _load(ckpt: Path | None, workdir: Path):
    from taslora_core.run_io import load_checkpoint, resolve_mole

    path = resolve_mole(workdir, ckpt)
    console.print(f"checkpoint: {path}")
    return load_checkpoint(path)


def _out_dir(out: Path | None, ckpt_path: Path) -> Path:
    directory = out or ckpt_path / "analysis"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@analyze_app.command("collapse")
@handle_errors
def collapse_cmd(
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="MoLE run folder (default: latest MoLE run).")] = None,
    num_subnets: Annotated[int, typer.Option("--num-subnets", help="Number of distinct random subnets compared.")] = 8,
    val_subset: Annotated[int | None, typer.Option("--val-subset", help="Use the first N images of the validation split.")] = 2000,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for collapse.json and collapse.png (default: <ckpt>/analysis).")] = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subnet sample.")] = 0,
) -> None:
    """Penultimate-feature cosine similarity between sampled subnets, with and without the experts."""
    from taslora_core.analysis import feature_collapse, sample_distinct
    from taslora_core.atomic import atomic_write_json
    from taslora_core.plots import plot_similarity_heatmaps
    from taslora_core.search.fitness import load_val_data

    if num_subnets < 2:
        raise fail("--num-subnets must be at least 2")
    loaded = _load(ckpt, workdir)
    val = load_val_data(loaded, val_subset=val_subset)
    console.print(f"validation images: {val.total} ({val.split_source})")
    subnets = sample_distinct(loaded.supernet.space, num_subnets, seed)
    result = feature_collapse(loaded.supernet, subnets, list(val.batches), loaded.mole)
    directory = _out_dir(out, loaded.path)
    summary = result.summary()
    atomic_write_json(directory / "collapse.json", {
        **summary, "subnets": [s.to_dict() for s in subnets], "images": val.total,
        "cos_supernet": result.without_experts.tolist(),
        "cos_mole": result.with_experts.tolist() if result.with_experts is not None else None})
    matrices = {"supernet alone": result.without_experts}
    if result.with_experts is not None:
        matrices["with MoLE experts"] = result.with_experts
    plot_similarity_heatmaps(matrices, directory / "collapse.png")
    table = Table(title=f"feature collapse: mean off-diagonal cosine similarity of {len(subnets)} subnets")
    table.add_column("model")
    table.add_column("mean cos", justify="right")
    table.add_row("supernet alone", f"{summary['mean_cos_supernet']:.4f}")
    if summary["mean_cos_mole"] is not None:
        table.add_row("with MoLE experts", f"{summary['mean_cos_mole']:.4f}")
    console.print(table)
    console.print(f"wrote {directory / 'collapse.json'} and {directory / 'collapse.png'}")


@analyze_app.command("routing")
@handle_errors
def routing_cmd(
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="MoLE run folder (default: latest MoLE run).")] = None,
    num_subnets: Annotated[int, typer.Option("--num-subnets", help="Distinct random subnets whose blocks are averaged.")] = 200,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for routing.json and routing.png (default: <ckpt>/analysis).")] = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subnet sample.")] = 0,
) -> None:
    """How experts are used per architecture group and layer: entropy, top-expert share, own-expert share."""
    import math

    from taslora_core.analysis import routing_stats
    from taslora_core.atomic import atomic_write_json
    from taslora_core.plots import plot_routing_heatmap
    from taslora_core.slicing import LINEAR_LAYERS

    loaded = _load(ckpt, workdir)
    if loaded.mole is None:
        raise fail(f"{loaded.path} is a plain supernet; routing needs a MoLE checkpoint from `taslora train`")
    stats = routing_stats(loaded.mole, num_subnets, seed)
    groups = loaded.mole.router.groups
    ent, top, own = stats.entropy(), stats.top_share(), stats.own_expert_share()
    directory = _out_dir(out, loaded.path)
    atomic_write_json(directory / "routing.json", {
        "groups": [g.__dict__ for g in groups], "layers": list(LINEAR_LAYERS), "blocks_per_group": stats.counts.tolist(),
        "mean_probs": stats.mean_probs.tolist(), "entropy": ent.tolist(), "top_share": top.tolist(),
        "own_expert_share": own.tolist(), "max_entropy": math.log(loaded.mole.num_experts)})
    plot_routing_heatmap(stats.mean_probs, [f"h{g.num_heads} r{g.mlp_ratio} e{g.embed_dim}" for g in groups],
                         list(LINEAR_LAYERS), directory / "routing.png", title="mean routing weight per group")
    table = Table(title=f"expert usage over {int(stats.counts.sum())} blocks of {num_subnets} subnets (max entropy {math.log(loaded.mole.num_experts):.2f})")
    for col in ("group", "heads", "MLP", "embed", "blocks", "entropy", "top share", "own share"):
        table.add_column(col, justify="right")
    for g, grp in enumerate(groups):
        table.add_row(str(g), str(grp.num_heads), str(grp.mlp_ratio), str(grp.embed_dim), str(int(stats.counts[g])),
                      f"{ent[g].mean():.3f}", f"{top[g].mean():.3f}",
                      "-" if math.isnan(own[g].mean()) else f"{own[g].mean():.3f}")
    console.print(table)
    console.print(f"wrote {directory / 'routing.json'} and {directory / 'routing.png'}")
