"""`train_mole`: train MoLE experts + router on a frozen supernet (TAS-LoRA) or one of its baselines
(`single-lora`: one expert; `finetune`: full fine-tuning of the supernet, written as a `supernets` run).

The run's recipe (`taslora_core.train.recipes`) is resolved first: its settings fill the config's unset fields,
and the resolved config is what train_config.json, mole.json and summary.json record."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from taslora_core import data as D
from taslora_core.checkpoint import (
    SPACE_JSON, SUPERNET_WEIGHTS, CheckpointError, atomic_write_json, file_sha256, load_supernet, save_supernet,
)
from taslora_core.distributed import broadcast_object, broadcast_tensors
from taslora_core.mole import MoLEConfig, MoLEModel
from taslora_core.mole_io import save_mole
from taslora_core.router import ROUTER_INITS, ROUTER_KINDS, RouterConfig
from taslora_core.run_data import RecordedData, describe_data, resolve_run_data
from taslora_core.run_io import is_supernet_dir, resolve_supernet, supernet_dir_of
from taslora_core.train.config import MODES, MoLETrainConfig
from taslora_core.train.loop import TRAIN_STATE, TrainTask, run_loop, save_train_state
from taslora_core.train.optim import finetune_optimizers, mole_optimizers
from taslora_core.train.recipes import PAPER_SETTINGS, resolve_recipe
from taslora_core.train.resume import open_resume, with_runtime
from taslora_core.train.run_files import (
    SPLIT_FILE, SUMMARY, TRAIN_CONFIG, RunResult, relative_to_run, run_kind_dir, write_run_config,
)
from taslora_core.train.run_setup import (
    Log, check_classes, check_common, loop_config, split_note, training_process, use_amp,
)
from taslora_core.train.summary import common_summary, compare, eval_subnets, mean_improvement
from taslora_core.train.tasks import FinetuneTask, MoLETask, SupernetTask
from taslora_core.workspace import new_run, runs


def default_supernet(workdir: str | Path) -> Path:
    """The newest finished supernet run that is not a `--mode finetune` baseline (else the newest one)."""
    for run in reversed(runs(workdir, "supernets")):
        try:
            meta = json.loads((run.path / SPACE_JSON).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "finetuned_from" not in meta:
            return run.path
    return resolve_supernet(workdir, None)


def mole_config(cfg: MoLETrainConfig) -> MoLEConfig:
    if cfg.router not in ROUTER_KINDS:
        raise ValueError(f"unknown --router '{cfg.router}'; choose one of {', '.join(ROUTER_KINDS)}")
    if cfg.router_init not in ROUTER_INITS:
        raise ValueError(f"unknown --router-init '{cfg.router_init}'; choose one of {', '.join(ROUTER_INITS)}")
    if cfg.rank < 1:
        raise ValueError(f"--rank must be >= 1, got {cfg.rank}")
    experts = 1 if cfg.mode == "single-lora" else cfg.experts
    if experts is not None and experts < 1:
        raise ValueError(f"--experts must be >= 1, got {experts}")
    router = RouterConfig(kind=cfg.router, include_depth=cfg.router_depth, init=cfg.router_init, beta=cfg.beta,
                          position_heads=cfg.router_position_heads, init_mass=cfg.router_init_mass or None,
                          hard=cfg.routing == "hard")
    return MoLEConfig(num_experts=experts, rank=cfg.rank, router=router, alpha=cfg.lora_alpha,
                      structure=cfg.expert_structure)


def recorded_config(recorded: dict[str, Any]) -> MoLETrainConfig:
    """The config a run recorded in its train_config.json; a run of an older version records no recipe and gets
    `paper`, the recipe it trained with, whatever today's default recipe is."""
    return MoLETrainConfig.from_dict({"recipe": "paper", **recorded})  # type: ignore[return-value]


def recipe_record(cfg: MoLETrainConfig) -> dict[str, Any]:
    """The recipe's name and every setting it controls, as the run used them (mole.json, summary.json)."""
    return {"name": cfg.recipe, "settings": {k: getattr(cfg, k) for k in PAPER_SETTINGS}}


def describe_recipe(cfg: MoLETrainConfig, model: MoLEModel) -> str:
    """One phrase for the log: the experts, the routing and the sampling the run trains with."""
    if cfg.expert_structure == "factorised":
        experts = f"factorised experts ({model.num_experts} parts) of rank {cfg.rank}"
    else:
        experts = f"K={model.num_experts} experts of rank {cfg.rank}"
    if cfg.routing == "hard":
        routing = "hard group routing"
    elif cfg.expert_structure == "factorised":
        routing = "parts weighted by the architecture"
    else:
        start = (f"own mass {cfg.router_init_mass:g}" if cfg.router_init_mass else f"beta {cfg.beta:g}")
        routing = f"router {cfg.router} ({cfg.router_init} init, {start}, {cfg.routing})"
    parts = [f"{experts} (alpha {cfg.lora_alpha:g})", routing]
    if cfg.sampling == "sandwich":
        parts.append(f"sandwich: largest + smallest + {cfg.sandwich_random} random per step"
                     + (f", distilled (T {cfg.distill_temperature:g})" if cfg.distill else ""))
    if cfg.mi_weight:
        parts.append(f"routing MI weight {cfg.mi_weight:g}")
    return ", ".join(parts)


def train_mole(
    cfg: MoLETrainConfig,
    resume: str | None = None,
    log: Log | None = None,
    callback: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train MoLE experts + router on a frozen supernet (`mode` mole or single-lora) into a new `mole` run, or
    fine-tune the whole supernet (`mode` finetune) into a new `supernets` run; or resume such a run."""
    if cfg.mode not in MODES:
        raise ValueError(f"unknown --mode '{cfg.mode}'; choose one of {', '.join(MODES)}")
    cfg = resolve_recipe(cfg)
    with training_process(cfg, log) as (ctx, say):
        resume_state = None
        if resume:
            run_dir, doc, resume_state = open_resume(resume, cfg.workdir, cfg.mode, MODES)
            cfg = resolve_recipe(with_runtime(recorded_config(doc["config"]), cfg))  # type: ignore[arg-type]
            # a run moved together with its supernets resolves the recorded path as a finished run does
            supernet_dir, source = supernet_dir_of(run_dir, doc, TRAIN_CONFIG), "recorded in the resumed run"
            want_sha = doc.get("supernet_sha256")
            say(f"resuming {run_dir} at step {resume_state['global_step']} (settings from its {TRAIN_CONFIG})")
        elif cfg.supernet:
            supernet_dir, source, want_sha = Path(cfg.supernet), "--supernet", None
        else:
            supernet_dir, source, want_sha = default_supernet(cfg.workdir), f"latest in workspace {cfg.workdir}", None
        if supernet_dir.is_file():
            supernet_dir = supernet_dir.parent
        supernet_dir = supernet_dir.resolve()
        if not is_supernet_dir(supernet_dir):
            raise CheckpointError(
                f"{supernet_dir} is not a taslora supernet (needs {SUPERNET_WEIGHTS} and {SPACE_JSON}); "
                "train one with `taslora supernet train` or import one with `taslora supernet import`"
            )
        sha = file_sha256(supernet_dir / SUPERNET_WEIGHTS)
        if want_sha and sha != want_sha:
            raise CheckpointError(f"supernet {supernet_dir} changed since this run started (sha256 mismatch); start a new run")
        say(f"supernet: {supernet_dir} ({source})")
        supernet = load_supernet(supernet_dir, ctx.device)
        supernet.set_drop_path(cfg.drop_path)
        space = supernet.space
        # a new run reuses the supernet's held-out split when it was made on the same data
        recorded = None if resume else RecordedData.read(supernet_dir, SPACE_JSON, "the supernet run")
        run_data = resolve_run_data(space, recorded, cfg.data, cfg.to_dict())
        dc = run_data.config
        check_common(cfg, dc)
        mcfg = mole_config(cfg) if cfg.mode != "finetune" else None

        if resume:
            split, split_src = D.load_split(run_dir / SPLIT_FILE), f"reused from {run_dir / SPLIT_FILE}"
        else:
            split, split_src = run_data.split, run_data.split_source
        bundle = D.build_data(dc, cfg.val_size, cfg.seed, cfg.train_subset, cfg.val_subset, split)
        check_classes(bundle, space)
        if not resume:
            kdir = run_kind_dir(cfg.mode)
            default_name = {"mole": "mole", "single-lora": "single-lora", "finetune": "finetune"}[cfg.mode]
            run_dir = Path(broadcast_object(str(new_run(cfg.workdir, kdir, cfg.name or default_name)) if ctx.is_main else None, ctx))
            if ctx.is_main:
                D.save_split(run_dir / SPLIT_FILE, bundle.split)
                write_run_config(run_dir, cfg.mode, cfg, {
                    "supernet_dir": str(supernet_dir), "supernet_sha256": sha, "space": space.to_dict(), "data": dc.to_dict(),
                })
        say(f"data: {describe_data(dc)}; split {split_src}: {split_note(bundle.split, bundle)}")
        say(f"run folder: {run_dir}")

        loaders = D.make_loaders(bundle, dc, cfg.batch_size, ctx.rank, ctx.world_size, cfg.seed, cfg.num_workers,
                                 cfg.eval_batch_size)
        steps_per_epoch = len(loaders.train)
        steps, warmup = steps_per_epoch * cfg.epochs, steps_per_epoch * cfg.warmup_epochs
        amp = use_amp(cfg, ctx)
        torch.manual_seed(cfg.seed)
        if cfg.mode == "finetune":
            optim = finetune_optimizers(supernet, steps, warmup, cfg.expert_lr, cfg.warmup_start_lr, cfg.min_lr, cfg.weight_decay)
            broadcast_tensors(list(supernet.parameters()), ctx)
            task: TrainTask = FinetuneTask(supernet, optim, loaders.val, eval_subnets(space), ctx, amp)
            what = f"full fine-tuning of the supernet, lr {cfg.expert_lr:g}"
        else:
            model = MoLEModel(supernet, mcfg).to(ctx.device)
            router = model.router if cfg.routing == "learned" else None
            if router is None:
                model.router.requires_grad_(False)
            optim = mole_optimizers(model.experts, router, steps, warmup, cfg.expert_lr, cfg.router_lr,
                                    cfg.warmup_start_lr, cfg.min_lr, cfg.weight_decay, cfg.momentum, cfg.lora_plus)
            broadcast_tensors(list(model.experts.parameters()) + list(model.router.parameters()), ctx)
            task = MoLETask(model, optim, loaders.val, eval_subnets(space), ctx, amp, mi_weight=cfg.mi_weight)
            what = (f"{cfg.mode}, recipe {cfg.recipe}: {describe_recipe(cfg, model)}; experts AdamW lr {cfg.expert_lr:g}"
                    + (f" (U x{cfg.lora_plus:g})" if cfg.lora_plus != 1 else "")
                    + (f", router SGD lr {cfg.router_lr:g} (frozen for {cfg.warmup_epochs} warm-up epoch(s))"
                       if router is not None else ""))
        say(f"training {cfg.epochs} epochs x {steps_per_epoch} steps, batch {cfg.batch_size} x {ctx.world_size} rank(s), "
            f"{what}, device {ctx.device}, amp {'bf16' if amp else 'off'}")
        extra = {"config": cfg.to_dict(), "space": space.to_dict(), "supernet_dir": str(supernet_dir), "supernet_sha256": sha}
        loop_cfg = dataclasses.replace(loop_config(cfg, amp), sampling=cfg.sampling, sandwich_random=cfg.sandwich_random,
                                       distill=bool(cfg.distill), distill_temperature=cfg.distill_temperature)
        result = run_loop(task, loaders.train, D.make_train_loss(dc), D.make_mixup(dc, bundle.num_classes), ctx,
                          loop_cfg, run_dir, extra, resume_state, say, callback)

        summary: dict[str, Any] = {"kind": cfg.mode, "run": run_dir.name, "space": space.name,
                                   "supernet_dir": str(supernet_dir), "recipe": recipe_record(cfg),
                                   **common_summary(cfg, result, bundle)}
        if cfg.mode == "finetune":
            original = load_supernet(supernet_dir, ctx.device)
            base_task = SupernetTask(original, None, loaders.val, [], ctx, amp)
            summary["val"] = compare(task, base_task, space, cfg, "finetuned", "original")
        else:
            summary["val"] = compare(task, None, space, cfg, "with_experts", "without_experts")
        summary["mean_improvement"] = mean_improvement(summary["val"])
        if ctx.is_main:
            save_train_state(run_dir / TRAIN_STATE, task, loaders.train, result.global_step, extra, finished=True)
            atomic_write_json(run_dir / SUMMARY, summary)
            common = {"data": dc.to_dict(), "split": SPLIT_FILE, "train": cfg.to_dict(), "mode": cfg.mode, "seed": cfg.seed}
            if cfg.mode == "finetune":
                save_supernet(run_dir, supernet, extra={
                    "kind": "finetune", "finetuned_from": relative_to_run(supernet_dir, run_dir, Path(cfg.workdir)),
                    "finetuned_from_sha256": sha, **common,
                })
            else:
                save_mole(run_dir, task.model, extra={  # type: ignore[attr-defined]
                    "supernet_dir": relative_to_run(supernet_dir, run_dir, Path(cfg.workdir)), "supernet_sha256": sha,
                    "recipe": recipe_record(cfg), **common,
                })
        return RunResult(run_dir, summary)
