"""`taslora supernet train`, `taslora supernet import`, `taslora train` and `taslora eval`.

Every command takes --workdir and --seed; the training commands also --epochs, --batch-size (per rank) and
--train-subset. Launch the training commands with `torchrun --nproc_per_node N -m taslora_cli.main ...` for
data-parallel training (gloo on CPU, NCCL on CUDA); only rank 0 writes files and prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from taslora_cli.app import DEFAULT_WORKDIR_PATH, SeedOpt, WorkdirOpt, app, console, fail, handle_errors, supernet_app
from taslora_cli.config_options import config_option, config_options
from taslora_core.train import (
    MoLETrainConfig, RunResult, SupernetTrainConfig, TrainConfig, TrainingDiverged, evaluate_run, import_supernet, train_mole,
    train_supernet,
)

# Training options come from the config dataclasses (`taslora_core.train`); these few are not config fields.
NameOpt = config_option(TrainConfig, "name")
ResumeOpt = Annotated[str | None, typer.Option("--resume", help="Continue a killed run: its folder, or 'latest' (newest unfinished run of this kind in --workdir). Settings come from the run.")]
# `eval` reuses the documented training options it shares.
ValSizeOpt, ValSubsetOpt = config_option(TrainConfig, "val_size"), config_option(TrainConfig, "val_subset")
DeviceOpt, AmpOpt = config_option(TrainConfig, "device"), config_option(TrainConfig, "amp")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


def _run_training(trainer: Callable[..., RunResult], cfg: TrainConfig, resume: str | None) -> None:
    """Run `trainer` (train_supernet or train_mole), print its summary and folder; a diverged run exits with 3."""
    try:
        run = trainer(cfg, resume=resume, log=_say)
    except TrainingDiverged as err:
        raise (fail(f"{err}", code=3) if _is_main_process() else typer.Exit(3)) from None
    _print_summary(run.summary)
    if _is_main_process():
        kind = run.summary.get("kind")
        what = {"supernet": "supernet", "finetune": "fine-tuned supernet"}.get(kind, "MoLE experts + router")
        _say(f"{what} written to {run.run_dir}")


def _fmt(res: dict[str, Any]) -> str:
    return f"{100 * res['top1']:.2f}% / {res['loss']:.4f}"


def _print_summary(summary: dict[str, Any]) -> None:
    if not _is_main_process():
        return
    val = summary.get("val", {})
    if not val:
        return
    first = next(iter(val.values()))
    pairs = [k for k in first if isinstance(first[k], dict) and "loss" in first[k]]
    table = Table(title=f"held-out validation (top-1 / loss), run {summary.get('run')}")
    table.add_column("subnet")
    if pairs:
        for k in pairs:
            table.add_column(k.replace("_", " "), justify="right")
    else:
        table.add_column("top-1 / loss", justify="right")
    for name, entry in val.items():
        cells = [_fmt(entry[k]) for k in pairs] if pairs else [_fmt(entry)]
        table.add_row(name, *cells)
    console.print(table)
    if "mean_improvement" in summary:
        imp = summary["mean_improvement"]
        _say(f"mean improvement over {len(val)} subnets: loss {imp['loss']:+.4f}, top-1 {100 * imp['top1']:+.2f} points")
    _say(f"training throughput: {summary.get('train_images_per_s', 0):.0f} images/s")


# ---------------------------------------------------------------------- supernet train
@supernet_app.command("train")
@handle_errors
@config_options(SupernetTrainConfig)
def supernet_train_cmd(cfg: SupernetTrainConfig, resume: ResumeOpt = None) -> None:
    """Train a weight-entangled supernet from scratch (AutoFormer's recipe, one random subnet per step)."""
    _run_training(train_supernet, cfg, resume)


# ---------------------------------------------------------------------- supernet import
@supernet_app.command("import")
@handle_errors
def supernet_import_cmd(
    ckpt: Annotated[Path, typer.Argument(help="Official AutoFormer checkpoint (.pth with the state dict under 'model').")],
    space: Annotated[str, typer.Option("--space", help="The space the checkpoint was trained with (autoformer-t/s/b or YAML).")] = "autoformer-t",
    name: NameOpt = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: SeedOpt = 0,
) -> None:
    """Convert an official AutoFormer supernet checkpoint into a supernets run (weights-only loading)."""
    del seed  # nothing random here; accepted for a uniform command line
    _say(f"reading AutoFormer checkpoint {ckpt} as space {space}")
    run_dir = import_supernet(ckpt, space, workdir, name)
    _say(f"supernet written to {run_dir}")


# ---------------------------------------------------------------------- train (MoLE and baselines)
@app.command("train")
@handle_errors
@config_options(MoLETrainConfig)
def train_cmd(cfg: MoLETrainConfig, resume: ResumeOpt = None) -> None:
    """Train LoRA experts + router on a frozen supernet (TAS-LoRA), or one of the paper's baselines."""
    _run_training(train_mole, cfg, resume)


# ---------------------------------------------------------------------- eval
@app.command("eval")
@handle_errors
def eval_cmd(
    subnet: Annotated[str, typer.Option("--subnet", help="Subnet JSON/YAML, or 'largest' / 'smallest'.")],
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="MoLE or supernet run folder (default: the newest MoLE run in --workdir).")] = None,
    no_experts: Annotated[bool, typer.Option("--no-experts", help="Evaluate the bare supernet weights of a MoLE run.")] = False,
    split: Annotated[str, typer.Option("--split", help="val (the run's held-out split) or test.")] = "val",
    data: Annotated[str | None, typer.Option("--data", help="Data to evaluate on (default: what the run recorded).")] = None,
    val_size: ValSizeOpt = TrainConfig.val_size,
    val_subset: ValSubsetOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Evaluation batch size.")] = 512,
    device: DeviceOpt = TrainConfig.device,
    amp: AmpOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only a JSON object.")] = False,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: SeedOpt = 0,
) -> None:
    """Top-1 and loss of one subnet of a trained checkpoint, with or without its experts."""
    report = evaluate_run(
        ckpt, subnet, use_experts=not no_experts, split=split, data=data, workdir=workdir, seed=seed,
        val_size=val_size, val_subset=val_subset, batch_size=batch_size, device=device, amp=amp,
    )
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    for line in report.sources:
        _say(line)
    r = report.result
    experts = "with experts" if report.use_experts else "without experts"
    _say(f"top-1 {100 * r.top1:.2f}%  loss {r.loss:.4f}  on {r.count} {report.split} images ({experts})")
