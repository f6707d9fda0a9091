"""`taslora supernet train`, `taslora supernet import`, `taslora train` and `taslora eval`.

Every command takes --workdir and --seed; the training commands also --epochs, --batch-size (per rank) and
--train-subset. Launch the training commands with `torchrun --nproc_per_node N -m taslora_cli.main ...` for
data-parallel training (gloo on CPU, NCCL on CUDA); only rank 0 writes files and prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from taslora_cli.app import DEFAULT_WORKDIR_PATH, SeedOpt, WorkdirOpt, app, console, fail, handle_errors, supernet_app
from taslora_core.train import (
    MODES, MoLETrainConfig, SupernetTrainConfig, TrainingDiverged, evaluate_run, import_supernet, train_mole,
    train_supernet,
)

# ---------------------------------------------------------------------- shared options
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Training epochs.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per step on each rank (total = this x ranks).")]
TrainSubsetOpt = Annotated[int | None, typer.Option("--train-subset", help="Train on the first N images of the (seeded, shuffled) training split only.")]
DataOpt = Annotated[str, typer.Option("--data", help="'fmnist' (Fashion-MNIST, Debian package) or an ImageNet-style folder PATH/{train,val}/<class>/*.")]
ValSizeOpt = Annotated[int, typer.Option("--val-size", help="Held-out validation images carved from the training set (capped at 20%).")]
ValSubsetOpt = Annotated[int | None, typer.Option("--val-subset", help="Evaluate on the first N held-out images only (epoch ends and summary).")]
MixupOpt = Annotated[float | None, typer.Option("--mixup", help="Mixup alpha (default: the data preset's: 0 for fmnist, 0.8 for folders).")]
CutmixOpt = Annotated[float | None, typer.Option("--cutmix", help="CutMix alpha (default: preset's: 0 fmnist, 1.0 folders).")]
SmoothingOpt = Annotated[float | None, typer.Option("--smoothing", help="Label smoothing (default: preset's 0.1).")]
AutoAugOpt = Annotated[str | None, typer.Option("--auto-augment", help="timm auto-augment policy for folder data, or 'none' (default: preset's rand-m9-mstd0.5-inc1 for folders).")]
ReProbOpt = Annotated[float | None, typer.Option("--re-prob", help="Random-erasing probability for folder data (default: preset's 0.25 for folders).")]
DropPathOpt = Annotated[float, typer.Option("--drop-path", help="Max stochastic-depth rate (AutoFormer 0.1).")]
WarmupOpt = Annotated[int, typer.Option("--warmup-epochs", help="Warm-up epochs.")]
WdOpt = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N.")]
AmpOpt = Annotated[bool | None, typer.Option("--amp/--no-amp", help="bf16 autocast (default: on for CUDA, off on CPU).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch CPU threads (default: torch's choice).")]
SaveEveryOpt = Annotated[int, typer.Option("--save-every-steps", help="Also checkpoint every N steps (0: only at epoch ends).")]
LogEveryOpt = Annotated[int, typer.Option("--log-every", help="Write a metrics.jsonl step record every N steps.")]
ClipOpt = Annotated[float | None, typer.Option("--clip-grad", help="Clip the gradient norm to this value (default: no clipping, as AutoFormer).")]
EvalBatchOpt = Annotated[int, typer.Option("--eval-batch-size", help="Batch size of evaluation.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Data-loader workers for folder data.")]
SummaryOpt = Annotated[int, typer.Option("--summary-subnets", help="Random subnets evaluated in summary.json besides the largest and smallest.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Suffix of the run folder name.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
ResumeOpt = Annotated[str | None, typer.Option("--resume", help="Continue a killed run: its folder, or 'latest' (newest unfinished run of this kind in --workdir). Settings come from the run.")]
NanOpt = Annotated[int | None, typer.Option("--debug-nan-at-step", hidden=True, help="TEST HOOK: make the loss NaN at this global step.")]


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


def _diverged(err: TrainingDiverged) -> typer.Exit:
    if not _is_main_process():
        return typer.Exit(3)
    return fail(f"{err}", code=3)


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
def supernet_train_cmd(
    space: Annotated[str, typer.Option("--space", help="Search space preset (fmnist, autoformer-t/s/b) or YAML.")] = "fmnist",
    data: DataOpt = "fmnist",
    epochs: EpochsOpt = 10,
    batch_size: BatchOpt = 128,
    lr: Annotated[float, typer.Option("--lr", help="Base learning rate per 512 images (AutoFormer 5e-4); the run uses lr x total batch / 512.")] = 5e-4,
    warmup_epochs: WarmupOpt = 1,
    warmup_lr: Annotated[float, typer.Option("--warmup-lr", help="Learning rate at the start of warm-up.")] = 1e-6,
    min_lr: Annotated[float, typer.Option("--min-lr", help="Learning rate at the end of the cosine.")] = 1e-5,
    weight_decay: WdOpt = 0.05,
    drop_path: DropPathOpt = 0.1,
    train_subset: TrainSubsetOpt = None,
    val_size: ValSizeOpt = 10000,
    val_subset: ValSubsetOpt = None,
    mixup: MixupOpt = None,
    cutmix: CutmixOpt = None,
    smoothing: SmoothingOpt = None,
    auto_augment: AutoAugOpt = None,
    re_prob: ReProbOpt = None,
    device: DeviceOpt = "auto",
    amp: AmpOpt = None,
    threads: ThreadsOpt = None,
    save_every_steps: SaveEveryOpt = 0,
    log_every: LogEveryOpt = 10,
    clip_grad: ClipOpt = None,
    eval_batch_size: EvalBatchOpt = 512,
    workers: WorkersOpt = 4,
    summary_subnets: SummaryOpt = 3,
    name: NameOpt = None,
    resume: ResumeOpt = None,
    quiet: QuietOpt = False,
    debug_nan_at_step: NanOpt = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: SeedOpt = 0,
) -> None:
    """Train a weight-entangled supernet from scratch (AutoFormer's recipe, one random subnet per step)."""
    cfg = SupernetTrainConfig(
        workdir=str(workdir), seed=seed, epochs=epochs, batch_size=batch_size, data=data, val_size=val_size,
        val_subset=val_subset, train_subset=train_subset, mixup=mixup, cutmix=cutmix, smoothing=smoothing,
        auto_augment=auto_augment, re_prob=re_prob, drop_path=drop_path, warmup_epochs=warmup_epochs,
        weight_decay=weight_decay, min_lr=min_lr, device=device, amp=amp, threads=threads,
        save_every_steps=save_every_steps, log_every=log_every, clip_grad=clip_grad, eval_batch_size=eval_batch_size,
        num_workers=workers, summary_subnets=summary_subnets, name=name, quiet=quiet,
        debug_nan_at_step=debug_nan_at_step, space=space, lr=lr, warmup_lr=warmup_lr,
    )
    try:
        run = train_supernet(cfg, resume=resume, log=_say)
    except TrainingDiverged as err:
        raise _diverged(err) from None
    _print_summary(run.summary)
    if _is_main_process():
        _say(f"supernet written to {run.run_dir}")


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
def train_cmd(
    supernet: Annotated[Path | None, typer.Option("--supernet", help="Supernet run folder (default: the newest non-fine-tuned supernet run in --workdir).")] = None,
    data: DataOpt = "fmnist",
    mode: Annotated[str, typer.Option("--mode", help="mole (TAS-LoRA), single-lora (K=1 baseline) or finetune (full fine-tuning baseline; writes a supernets run).")] = "mole",
    experts: Annotated[int | None, typer.Option("--experts", help="Experts K per layer (default: one per architecture group).")] = None,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank r of every expert.")] = 8,
    lora_alpha: Annotated[float, typer.Option("--lora-alpha", help="LoRA scale numerator: an expert adds (alpha / rank) U D (paper: 1, i.e. U D / r).")] = 1.0,
    router: Annotated[str, typer.Option("--router", help="Router core: lstm, gru or mlp (block-wise, no recurrence).")] = "lstm",
    router_init: Annotated[str, typer.Option("--router-init", help="group (group-wise init, TAS-LoRA) or random.")] = "group",
    router_depth: Annotated[bool, typer.Option("--router-depth/--no-router-depth", help="Feed the depth to the router too (groups then include depth).")] = False,
    beta: Annotated[float, typer.Option("--beta", help="Group-wise init: bias of a group's own expert.")] = 3.0,
    epochs: EpochsOpt = 10,
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs", help="Epochs with the router frozen and the expert LR rising linearly from --warmup-start-lr (paper: 5 of 50).")] = 1,
    batch_size: BatchOpt = 128,
    expert_lr: Annotated[float, typer.Option("--expert-lr", help="Experts' AdamW LR (also the LR of --mode finetune).")] = 5e-4,
    router_lr: Annotated[float, typer.Option("--router-lr", help="Router's SGD LR (momentum 0.9).")] = 0.1,
    warmup_start_lr: Annotated[float, typer.Option("--warmup-start-lr", help="Expert LR at the start of warm-up.")] = 1e-5,
    min_lr: Annotated[float, typer.Option("--min-lr", help="Expert LR at the end of the cosine (the router's goes to 0).")] = 1e-6,
    weight_decay: WdOpt = 0.05,
    drop_path: DropPathOpt = 0.1,
    train_subset: TrainSubsetOpt = None,
    val_size: ValSizeOpt = 10000,
    val_subset: ValSubsetOpt = None,
    mixup: MixupOpt = None,
    cutmix: CutmixOpt = None,
    smoothing: SmoothingOpt = None,
    auto_augment: AutoAugOpt = None,
    re_prob: ReProbOpt = None,
    device: DeviceOpt = "auto",
    amp: AmpOpt = None,
    threads: ThreadsOpt = None,
    save_every_steps: SaveEveryOpt = 0,
    log_every: LogEveryOpt = 10,
    clip_grad: ClipOpt = None,
    eval_batch_size: EvalBatchOpt = 512,
    workers: WorkersOpt = 4,
    summary_subnets: SummaryOpt = 3,
    name: NameOpt = None,
    resume: ResumeOpt = None,
    quiet: QuietOpt = False,
    debug_nan_at_step: NanOpt = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR_PATH,
    seed: SeedOpt = 0,
) -> None:
    """Train LoRA experts + router on a frozen supernet (TAS-LoRA), or one of the paper's baselines."""
    if mode not in MODES:
        raise fail(f"unknown --mode '{mode}'; choose one of {', '.join(MODES)}")
    cfg = MoLETrainConfig(
        workdir=str(workdir), seed=seed, epochs=epochs, batch_size=batch_size, data=data, val_size=val_size,
        val_subset=val_subset, train_subset=train_subset, mixup=mixup, cutmix=cutmix, smoothing=smoothing,
        auto_augment=auto_augment, re_prob=re_prob, drop_path=drop_path, warmup_epochs=warmup_epochs,
        weight_decay=weight_decay, min_lr=min_lr, device=device, amp=amp, threads=threads,
        save_every_steps=save_every_steps, log_every=log_every, clip_grad=clip_grad, eval_batch_size=eval_batch_size,
        num_workers=workers, summary_subnets=summary_subnets, name=name, quiet=quiet,
        debug_nan_at_step=debug_nan_at_step, supernet=str(supernet) if supernet else None, mode=mode,
        experts=experts, rank=rank, lora_alpha=lora_alpha, router=router, router_init=router_init, router_depth=router_depth, beta=beta,
        expert_lr=expert_lr, router_lr=router_lr, warmup_start_lr=warmup_start_lr,
    )
    try:
        run = train_mole(cfg, resume=resume, log=_say)
    except TrainingDiverged as err:
        raise _diverged(err) from None
    _print_summary(run.summary)
    if _is_main_process():
        what = "fine-tuned supernet" if mode == "finetune" else "MoLE experts + router"
        _say(f"{what} written to {run.run_dir}")


# ---------------------------------------------------------------------- eval
@app.command("eval")
@handle_errors
def eval_cmd(
    subnet: Annotated[str, typer.Option("--subnet", help="Subnet JSON/YAML, or 'largest' / 'smallest'.")],
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="MoLE or supernet run folder (default: the newest MoLE run in --workdir).")] = None,
    no_experts: Annotated[bool, typer.Option("--no-experts", help="Evaluate the bare supernet weights of a MoLE run.")] = False,
    split: Annotated[str, typer.Option("--split", help="val (the run's held-out split) or test.")] = "val",
    data: Annotated[str | None, typer.Option("--data", help="Data to evaluate on (default: what the run recorded).")] = None,
    val_size: ValSizeOpt = 10000,
    val_subset: ValSubsetOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Evaluation batch size.")] = 512,
    device: DeviceOpt = "auto",
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
