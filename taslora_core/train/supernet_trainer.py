"""`train_supernet`: train a weight-entangled supernet (AutoFormer's recipe) into a `supernets` run, or resume one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from taslora_core import data as D
from taslora_core.atomic import atomic_write_json
from taslora_core.checkpoint import save_supernet
from taslora_core.distributed import broadcast_object, broadcast_tensors
from taslora_core.run_data import describe_data
from taslora_core.space import SearchSpace
from taslora_core.supernet import Supernet
from taslora_core.train.config import SupernetTrainConfig
from taslora_core.train.loop import TRAIN_STATE, run_loop, save_train_state
from taslora_core.train.optim import scaled_lr, supernet_optimizers
from taslora_core.train.resume import open_resume, with_runtime
from taslora_core.train.run_files import SPLIT_FILE, SUMMARY, TRAIN_CONFIG, RunResult, write_run_config
from taslora_core.train.run_setup import (
    Log, check_classes, check_common, data_config, loop_config, split_note, training_process, use_amp,
)
from taslora_core.train.summary import common_summary, eval_subnets, summary_entry, summary_subnets
from taslora_core.train.tasks import SupernetTask
from taslora_core.workspace import new_run


def train_supernet(
    cfg: SupernetTrainConfig,
    resume: str | None = None,
    log: Log | None = None,
    callback: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train a supernet (one uniformly sampled subnet per step) into a new `supernets` run (or resume one)."""
    with training_process(cfg, log) as (ctx, say):
        resume_state = None
        if resume:
            run_dir, doc, resume_state = open_resume(resume, cfg.workdir, "supernet", ("supernet",))
            cfg = with_runtime(SupernetTrainConfig.from_dict(doc["config"]), cfg)  # type: ignore[assignment]
            space = SearchSpace.from_dict(doc["space"])
            say(f"resuming {run_dir} at step {resume_state['global_step']} (settings from its {TRAIN_CONFIG})")
        else:
            space = SearchSpace.resolve(cfg.space)
        say(f"space: {space.name} ({'preset' if cfg.space.lower() == space.name else cfg.space})")
        dc = data_config(cfg, space)
        check_common(cfg, dc)
        split = D.load_split(run_dir / SPLIT_FILE) if resume else None
        bundle = D.build_data(dc, cfg.val_size, cfg.seed, cfg.train_subset, cfg.val_subset, split)
        check_classes(bundle, space)
        if not resume:
            run_dir = Path(broadcast_object(str(new_run(cfg.workdir, "supernets", cfg.name or space.name)) if ctx.is_main else None, ctx))
            if ctx.is_main:
                D.save_split(run_dir / SPLIT_FILE, bundle.split)
                write_run_config(run_dir, "supernet", cfg, {"space": space.to_dict(), "data": dc.to_dict()})
        say(f"data: {describe_data(dc)}; split {'reused from ' + str(run_dir / SPLIT_FILE) if resume else 'new, saved to ' + str(run_dir / SPLIT_FILE)}: {split_note(bundle.split, bundle)}")
        say(f"run folder: {run_dir}")

        torch.manual_seed(cfg.seed)
        supernet = Supernet(space, drop_path_rate=cfg.drop_path).to(ctx.device)
        broadcast_tensors(list(supernet.parameters()), ctx)
        loaders = D.make_loaders(bundle, dc, cfg.batch_size, ctx.rank, ctx.world_size, cfg.seed, cfg.num_workers,
                                 cfg.eval_batch_size)
        steps = len(loaders.train) * cfg.epochs
        lr = scaled_lr(cfg.lr, cfg.batch_size * ctx.world_size)
        optim = supernet_optimizers(supernet, lr, steps, len(loaders.train) * cfg.warmup_epochs,
                                    cfg.weight_decay, cfg.warmup_lr, cfg.min_lr)
        amp = use_amp(cfg, ctx)
        say(f"training {cfg.epochs} epochs x {len(loaders.train)} steps, batch {cfg.batch_size} x {ctx.world_size} "
            f"rank(s), lr {lr:.3g} (base {cfg.lr:g} x {cfg.batch_size * ctx.world_size}/512), device {ctx.device}, "
            f"amp {'bf16' if amp else 'off'}")
        task = SupernetTask(supernet, optim, loaders.val, eval_subnets(space), ctx, amp)
        extra = {"config": cfg.to_dict(), "space": space.to_dict()}
        result = run_loop(task, loaders.train, D.make_train_loss(dc), D.make_mixup(dc, bundle.num_classes), ctx,
                          loop_config(cfg, amp), run_dir, extra, resume_state, say, callback)

        summary = {"kind": "supernet", "run": run_dir.name, "space": space.name, **common_summary(cfg, result, bundle)}
        summary["val"] = {}
        for name, sn in summary_subnets(space, cfg.seed, cfg.summary_subnets):
            res = task.evaluate(sn)
            summary["val"][name] = {**summary_entry(res), "subnet": sn.to_dict()}
            summary["val_count"] = res.count
        if ctx.is_main:
            save_train_state(run_dir / TRAIN_STATE, task, loaders.train, result.global_step, extra, finished=True)
            atomic_write_json(run_dir / SUMMARY, summary)
            save_supernet(run_dir, supernet, extra={
                "kind": "supernet", "data": dc.to_dict(), "split": SPLIT_FILE, "train": cfg.to_dict(),
            })
        return RunResult(run_dir, summary)
