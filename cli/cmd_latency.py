"""`taslora latency fit`: measure subnets on a target, fit a latency model per batch size, write latency-model.json.

Options are parsed here and handed to `taslora_deploy.fit_latency.fit_latency_model`, which measures, fits and
writes; this module only prints what it reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from taslora_cli.app import WorkdirOpt, app, console, handle_errors
from taslora_core.workspace import DEFAULT_WORKDIR

latency_app = typer.Typer(help="Latency models: fit one per target and batch size, for `search --latency-model`.",
                          no_args_is_help=True)
app.add_typer(latency_app, name="latency")


def _batches(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise typer.BadParameter(f"--batch takes batch sizes separated by commas (e.g. 1,32), got {text!r}") from None


def _quality_line(batch: int, model) -> str:
    """'batch 1: 97% of held-out subnets within +-10%; round-to-round noise p50 1.2% / p90 3.4%; 144 timings, ...'."""
    quality, timings = model.quality(), model.info["fit"].get("timings") or {}
    share = quality["heldout_within_10pct"]
    text = f"batch {batch}: " + ("nothing held out" if share is None else
                                 f"{100 * share:.0f}% of held-out subnets within +-10%")
    if quality["noise_p50"] is not None:
        text += f"; round-to-round noise p50 {100 * quality['noise_p50']:.1f}% / p90 {100 * quality['noise_p90']:.1f}%"
    if timings.get("timings"):
        text += (f"; {timings['timings']} timings of {timings['samples_median']:.0f} samples (median), "
                 f"{100 * timings['known_share']:.0f}% known within +-2% before the {model.info['fit']['max_time_s']:g} s cap")
    if model.info["fit"].get("unconfirmed"):
        text += f"; {model.info['fit']['unconfirmed']} subnet(s) unconfirmed after {model.info['fit']['max_rounds']} passes"
    load = model.info["fit"].get("load_average") or {}
    if load.get("before") is not None:
        text += f"; load average {load['before']:.1f} -> {load['after']:.1f}"
    return text


@latency_app.command("fit")
@handle_errors
def fit_cmd(
    target: Annotated[str, typer.Option(
        "--target", help="Runtime to measure on: ort-cpu (onnxruntime, CPU), torch-cpu, torch-cuda, trt (TensorRT "
        "engine per subnet, GPU).")] = "ort-cpu",
    batch: Annotated[str, typer.Option(
        "--batch", help="Images per timed call; several sizes separated by commas (1,32) fit one model each from the "
        "same exports.")] = "1",
    samples: Annotated[int, typer.Option(
        "--samples", help="Subnets measured to fit the model: the extremes of every dimension, every block type "
        "alone, then balanced mixed subnets.")] = 64,
    holdout: Annotated[int, typer.Option(
        "--holdout", help="Random subnets measured only to score the model (its held-out MAPE, share within +-10%, "
        "Spearman).")] = 32,
    space: Annotated[Optional[str], typer.Option(
        "--space", help="Search space (preset or YAML) to measure. Default: the space of --ckpt.")] = None,
    ckpt: Annotated[Optional[Path], typer.Option(
        "--ckpt", help="Run folder (MoLE or supernet) whose space is measured. Default: the latest MoLE run.")] = None,
    threads: Annotated[int, typer.Option(
        "--threads", help="CPU threads of ort-cpu/torch-cpu timing (1: stable on a shared machine; a search "
        "verifies with the model's).")] = 1,
    statistic: Annotated[str, typer.Option(
        "--statistic", help="What each timing keeps of its runs: median (the default; the more repeatable of the "
        "two in the measurements of docs/results.md) or min (the fastest run). Searches verify the same way.")] = "median",
    rounds: Annotated[int, typer.Option(
        "--rounds", help="Timing passes over all subnets in a shuffled order; their spread is reported as the "
        "noise.")] = 3,
    max_rounds: Annotated[Optional[int], typer.Option(
        "--max-rounds", help="Most passes per subnet: one whose fastest pass no other confirms within +5% is timed "
        "again until one does (a burst of other work only slows passes); the median of the confirmed passes is "
        "kept. Default: 2 x --rounds + 1.")] = None,
    iters: Annotated[int, typer.Option(
        "--iters", help="Least timed samples per subnet and pass; each timing then runs until its statistic is "
        "known within +-2% (95%) or --max-time passed.")] = 5,
    max_time: Annotated[float, typer.Option(
        "--max-time", help="Most seconds of timing per subnet and pass (longer: steadier numbers on a noisy "
        "machine).")] = 0.25,
    paired: Annotated[bool, typer.Option(
        "--paired/--unpaired", help="Time each subnet in interleaved pairs with one reference subnet and keep the "
        "ratio (holds beside another process whose phases change the machine's speed), or each alone.")] = True,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before each timing.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the mixed and held-out subnets.")] = 0,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Model file, or a folder (b<batch>/latency-model.json per batch size). Default: "
        "<workdir>/latency-models/<target>-b<batch>-<host>-<space hash>/latency-model.json.")] = None,
    onnx_dir: Annotated[Optional[Path], typer.Option(
        "--onnx-dir", help="Keep each subnet's ONNX export here and reuse it in later fits (ort-cpu, trt). "
        "Default: <workdir>/latency-exports.")] = None,
) -> None:
    """Fit a latency model of one target: measure designed subnets, fit per-block terms, score it on held-out subnets.

    Prints the held-out accuracy of the model next to FLOPs as a proxy, and the path of each latency-model.json
    (the last line of stdout, one per batch size). Measurements also fill the search's latency cache.
    """
    from taslora_deploy.fit_latency import FitConfig, fit_latency_model, measured_supernet

    config = FitConfig(target=target, batches=_batches(batch), samples=samples, holdout=holdout, seed=seed,
                       threads=threads, statistic=statistic, rounds=rounds, max_rounds=max_rounds, paired=paired, warmup=warmup, iters=iters,
                       max_time_s=max_time,
                       workdir=workdir, out=out, export_dir=onnx_dir)
    supernet, source = measured_supernet(space, ckpt, workdir, seed)
    console.print(f"space:      {escape(supernet.space.name)} ({escape(source)})", highlight=False)
    result = fit_latency_model(supernet, config, lambda m: console.print(escape(m), highlight=False, soft_wrap=True))
    table = Table(title=f"latency model vs FLOPs on held-out subnets ({target}; {result.measured} measurements in "
                        f"{result.wall_s:.0f} s, {result.export_s:.0f} s of it exporting/building)")
    for col in ("batch", "predictor", "form", "held-out", "MAPE", "within +-10%", "Spearman", "worst", "noise (p50/p90)"):
        table.add_column(col, justify="left" if col in ("predictor", "form") else "right")
    for b, model in result.models.items():
        info, noise = model.info, model.info["fit"]["noise"]
        spread = ("-" if noise["round_spread_median"] is None else
                  f"{100 * noise['round_spread_median']:.1f}% / {100 * noise['round_spread_p90']:.1f}%")
        for name, form, acc in (("model", model.terms.form, info["heldout"]),
                                ("FLOPs", "linear", info["flops_proxy"]["heldout"])):
            if not acc:
                continue
            rho = "-" if acc["spearman"] is None else f"{acc['spearman']:.3f}"
            table.add_row(str(b), name, form, str(acc["n"]), f"{100 * acc['mape']:.1f}%",
                          f"{100 * acc['within_10pct']:.0f}%", rho, f"{100 * acc['max_error']:.0f}%",
                          spread if name == "model" else "")
    console.print(table)
    for b, model in result.models.items():
        console.print(escape(_quality_line(b, model)), highlight=False, soft_wrap=True)
        if model.quality_warning():
            console.print(f"warning: {escape(model.quality_warning())}", highlight=False, soft_wrap=True)
    for path in result.paths.values():
        typer.echo(str(path))
