"""`specialize`: fine-tune ONE subnet alone, from its routed mixture of experts, into a `specialized/` run.

The router runs once for the subnet; `SubnetDeltas` (taslora_core.specialize.model) holds what is trained (the
experts' factors at that fixed routing, one fresh LoRA on the frozen mixture, or the full sliced linear weights).
Each step trains that subnet alone (THE training step, `taslora_core.train.loop.train_step`, with AdamW and a
warm-up + cosine schedule from `taslora_core.train.optim`) on the source run's training split with its data
recipe. Every `eval_every` steps the subnet is evaluated on the first `val_subset` images of the run's HELD-OUT
VALIDATION split (`taslora_core.run_data` resolves which images; the test split is never read), the best state
(lowest validation loss, or highest top-1 with `metric` top1) is kept and the run stops after `patience`
evaluations without improvement. Every
evaluation also writes the resumable state atomically (`save_train_state`: the per-step seeding, loader position,
optimiser and RNG states make a resumed run repeat exactly the steps of an uninterrupted one).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taslora_core import data as D
from taslora_core.artifact_read import read_json_artifact
from taslora_core.atomic import atomic_save_safetensors, atomic_write_json
from taslora_core.checkpoint import CheckpointError
from taslora_core.distributed import DistContext, resolve_device
from taslora_core.evaluate import EvalResult, evaluate
from taslora_core.integrity import SHA256_KEY, check_sha256, file_sha256, hashes_of
from taslora_core.run_data import RecordedData, describe_data, resolve_run_data
from taslora_core.run_io import LoadedCheckpoint, load_checkpoint
from taslora_core.specialize.config import SpecializeConfig
from taslora_core.specialize.inputs import (
    check_subnet, checkpoint_hashes, open_checkpoint, resolve_subnet_choice, source_record,
)
from taslora_core.specialize.model import SubnetDeltas
from taslora_core.specialize.run_files import (
    DELTAS_FILE, HASHED_FILES, KIND, LOG_TXT, RECORD_FORMAT, RECORD_VERSION, SPECIALIZE_JSON, SPLIT_FILE, SUBNET_JSON,
    find_resumable,
)
from taslora_core.subnet import Subnet
from taslora_core.train.loop import (
    METRICS, TRAIN_STATE, TRAIN_STATE_RECORD, MetricsLog, TrainTask, load_train_state, restore_rng, save_train_state,
    seed_step, train_step,
)
from taslora_core.train.config import TrainConfig
from taslora_core.train.optim import finetune_optimizers
from taslora_core.train.run_files import TRAIN_CONFIG, read_run_config
from taslora_core.train.run_setup import check_classes
from taslora_core.workspace import SUMMARY_JSON, is_finished, new_run

__all__ = ["SpecializeResult", "specialize"]

RUN_KIND = "specialize"  # train_config.json's "kind"
DEFAULT_RANK, DEFAULT_ALPHA = 8, 16.0  # the fresh LoRA's, when there are no experts to take them from
Log = Callable[[str], None]


@dataclass
class SpecializeResult:
    """A finished specialize run: its folder and its record (the content of specialize.json)."""

    run_dir: Path
    record: dict[str, Any]

    @property
    def val_before(self) -> dict[str, float]:
        """Validation loss/top-1/count at step 0 (the routed mixture, or the plain subnet)."""
        return self.record["val_before"]

    @property
    def val_after(self) -> dict[str, float]:
        """Validation loss/top-1/count of the kept (best) state."""
        return self.record["val_after"]

    @property
    def gain_points(self) -> float:
        """Validation top-1 gain in points (after - before)."""
        return 100 * (self.val_after["top1"] - self.val_before["top1"])

    @property
    def deltas_path(self) -> Path:
        """specialized.safetensors."""
        return self.run_dir / DELTAS_FILE


class SpecializeTask(TrainTask):
    """What the training step trains: the subnet's deltas on the frozen, once-sliced supernet."""

    kind = RUN_KIND

    def __init__(self, supernet: torch.nn.Module, module: SubnetDeltas, optim: Any) -> None:
        self.supernet, self.module, self.optim, self.space = supernet, module, optim, supernet.space

    def forward(self, images: torch.Tensor, subnet: Subnet) -> torch.Tensor:
        """Logits of the subnet with the current deltas."""
        return self.supernet.forward_tensors(images, subnet, self.module.tensors())

    def model_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors and the fixed scales / mixture (all the deltas depend on)."""
        return self.module.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore them (the same keys and shapes required)."""
        want = self.module.state_dict()
        if sorted(want) != sorted(state) or any(want[k].shape != state[k].shape for k in want):
            raise CheckpointError("training state does not match this specialize run (its tensors differ)")
        self.module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------- inputs
@dataclass
class _Setup:
    """Everything the loop needs, for a new or a resumed run."""

    cfg: SpecializeConfig
    run_dir: Path | None
    loaded: LoadedCheckpoint
    subnet: Subnet
    subnet_source: str
    ckpt_source: str
    data: D.DataConfig
    split: dict[str, Any] | None
    split_source: str
    recorded: dict[str, Any] | None = None  # train_config.json of a resumed run
    state: dict[str, Any] | None = None  # its train_state.pt


def _open_new(cfg: SpecializeConfig) -> _Setup:
    choice = resolve_subnet_choice(cfg.subnet, cfg.pareto, cfg.member, cfg.workdir)
    loaded, ckpt_source = open_checkpoint(cfg.ckpt, cfg.supernet, choice.ckpt, cfg.workdir)
    subnet = check_subnet(choice, loaded)
    rd = resolve_run_data(loaded.supernet.space, RecordedData.of_checkpoint(loaded), cfg.data,
                          data_override="keep_recipe", fit_space=True, reuse_split="always")
    return _Setup(cfg, None, loaded, subnet, choice.source, ckpt_source, rd.config, rd.split, rd.split_source)


def _open_resume(resume: str, now: SpecializeConfig) -> _Setup:
    run_dir = find_resumable(now.workdir) if resume == "latest" else Path(resume)
    if not (run_dir / TRAIN_STATE).exists() or not (run_dir / TRAIN_CONFIG).exists():
        raise CheckpointError(f"{run_dir} holds no resumable specialize state ({TRAIN_STATE}); pass a run folder "
                              "under specialized/ or 'latest'")
    if is_finished(KIND, run_dir):
        raise ValueError(f"{run_dir} already finished; nothing to resume")
    fix = "restore the run folder from a copy, or start a new run"
    record = read_json_artifact(run_dir / TRAIN_STATE_RECORD, "training state record", fix)
    check_sha256(run_dir / TRAIN_CONFIG, (record.get(SHA256_KEY) or {}).get(TRAIN_CONFIG), run_dir / TRAIN_STATE_RECORD, fix)
    doc = read_run_config(run_dir)
    if doc.get("kind") != RUN_KIND:
        raise ValueError(f"{run_dir} is a {doc.get('kind')} run, not a specialize run; resume it with its own command")
    cfg = SpecializeConfig.from_dict(doc["config"]).with_runtime(now)
    check_sha256(run_dir / SPLIT_FILE, doc.get("split_sha256"), run_dir / TRAIN_CONFIG, fix)
    source = doc["source"]
    loaded = load_checkpoint(source["path"])
    if checkpoint_hashes(loaded) != source["sha256"]:
        raise CheckpointError(f"checkpoint {source['path']} changed since specialize run {run_dir} started (sha256 "
                              "differs); restore it or start a new run")
    subnet = Subnet.from_dict(doc["subnet"]).check_in_space(loaded.supernet.space)
    state = load_train_state(run_dir / TRAIN_STATE)
    return _Setup(cfg, run_dir, loaded, subnet, doc.get("subnet_source", ""), "recorded in the resumed run",
                  D.DataConfig(**doc["data"]), D.load_split(run_dir / SPLIT_FILE), f"reused from {run_dir / SPLIT_FILE}",
                  doc, state)


# ---------------------------------------------------------------------- the verb
def specialize(config: SpecializeConfig, resume: str | None = None, log: Log | None = None,
               callback: Callable[[str, dict[str, Any]], None] | None = None) -> SpecializeResult:
    """Fine-tune one subnet alone from its routed mixture (or from a supernet alone) into a new `specialized/` run,
    or continue a killed one (`resume`: its folder or 'latest'); returns the finished run.

    `callback(event, info)` is called with "step" (info: global_step) after every optimisation step and "eval"
    (info: global_step, val) after every evaluation: tests use it to simulate a kill.
    """
    config.check()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    setup = _open_resume(resume, config) if resume else _open_new(config)
    cfg = setup.cfg
    cfg.check()
    say = log or (lambda _line: None)
    ctx = DistContext(device=resolve_device(cfg.device))  # one process: the subnet is small
    supernet = setup.loaded.supernet.to(ctx.device)
    for p in supernet.parameters():
        p.requires_grad_(False)
    supernet.set_drop_path(cfg.drop_path)
    space = supernet.space
    mole = setup.loaded.mole
    # a run that recorded no split (an imported supernet) gets one carved as training would carve it
    bundle = D.build_data(setup.data, TrainConfig.val_size, cfg.seed, cfg.train_subset, cfg.val_subset, setup.split)
    check_classes(bundle, space)
    loaders = D.make_loaders(bundle, setup.data, cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers,
                             eval_batch_size=cfg.eval_batch_size)
    steps_per_epoch = len(loaders.train)
    if steps_per_epoch == 0:
        raise ValueError(f"the training split ({len(bundle.train)} images) is smaller than one batch ({cfg.batch_size}); "
                         "lower --batch-size")
    total = cfg.budget_steps(steps_per_epoch)
    if cfg.warmup_steps >= total:
        raise ValueError(f"--warmup-steps ({cfg.warmup_steps}) must be below the budget ({total} steps)")
    rank = cfg.rank or (mole.experts.rank if mole is not None else DEFAULT_RANK)
    alpha = cfg.lora_alpha or (mole.config.alpha if mole is not None else DEFAULT_ALPHA)
    torch.manual_seed(cfg.seed)
    module = SubnetDeltas(supernet, setup.subnet, cfg.weights, mole, rank, alpha, seed=cfg.seed).to(ctx.device)
    optim = finetune_optimizers(module, total, cfg.warmup_steps, cfg.lr, cfg.min_lr, cfg.min_lr, cfg.weight_decay)
    task = SpecializeTask(supernet, module, optim)

    run_dir = setup.run_dir if setup.run_dir is not None else new_run(cfg.workdir, KIND, cfg.name or "specialize")
    log_file = run_dir / LOG_TXT

    def line(text: str, loud: bool = False) -> None:
        with open(log_file, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
        if loud or not cfg.quiet:
            say(text)

    lora = {"rank": rank, "alpha": alpha} if cfg.weights != "linear" else None
    if setup.recorded is None:
        _write_start(run_dir, setup, bundle, lora)
    what = {"lora": "the experts' U/D factors at the fixed routing" if mole is not None else
            f"a fresh rank-{rank} LoRA (alpha {alpha:g}) from zero (no experts)",
            "single-lora": f"a fresh rank-{rank} LoRA (alpha {alpha:g}) on the frozen routed mixture"
            if mole is not None else f"a fresh rank-{rank} LoRA (alpha {alpha:g}) from zero (no experts)",
            "linear": "the full sliced qkv/proj/fc1/fc2 weights" + (" from supernet + routed mixture" if mole else "")}
    line(f"specialize {run_dir}" + (" (resumed)" if setup.state else ""), loud=True)
    line(f"subnet: {setup.subnet.to_dict()} ({setup.subnet_source})")
    line(f"checkpoint: {setup.loaded.path} ({setup.loaded.kind}; {setup.ckpt_source})")
    line(f"data: {describe_data(setup.data)}; {len(bundle.train)} training images; validation: the first "
         f"{len(bundle.val)} held-out images (split {setup.split_source}); the test split is not read")
    line(f"training {what[cfg.weights]}: {total} steps ({total / steps_per_epoch:.2f} epochs) x batch {cfg.batch_size}, "
         f"AdamW lr {cfg.lr:g} cosine to {cfg.min_lr:g}, evaluation every {cfg.eval_every} steps (best validation "
         f"{cfg.metric}, patience {cfg.patience}), device {ctx.device}")

    progress = _run(task, setup, loaders, bundle, total, steps_per_epoch, run_dir, ctx, line, callback)
    module.load_state_dict(progress["best"]["state"])  # the kept state: the best on validation
    return _finish(task, setup, loaders, bundle, total, steps_per_epoch, run_dir, progress, lora, line)


def _write_start(run_dir: Path, setup: _Setup, bundle: D.DataBundle, lora: dict[str, Any] | None) -> None:
    """A new run's first files: split.json, subnet.json (what `taslora export --subnet` reads) and
    train_config.json (what a resume reads back; it records split.json's sha256)."""
    space = setup.loaded.supernet.space
    D.save_split(run_dir / SPLIT_FILE, bundle.split)
    atomic_write_json(run_dir / SUBNET_JSON, {"subnet": setup.subnet.to_dict(), "space": space.to_dict(),
                                              "ckpt": str(setup.loaded.path.resolve())})
    atomic_write_json(run_dir / TRAIN_CONFIG, {
        "kind": RUN_KIND, "config": setup.cfg.to_dict(), "subnet": setup.subnet.to_dict(),
        "subnet_source": setup.subnet_source, "space": space.to_dict(), "source": source_record(setup.loaded),
        "data": setup.data.to_dict(), "split_sha256": file_sha256(run_dir / SPLIT_FILE), "lora": lora})


def _val(res: EvalResult) -> dict[str, float]:
    return {"loss": res.loss, "top1": res.top1, "count": res.count}


def _better(val: dict[str, float], best: dict[str, float], metric: str) -> bool:
    """True when `val` beats `best` on the run's metric (top1: higher top-1, then lower loss; loss: lower loss)."""
    if metric == "top1" and val["top1"] != best["top1"]:
        return val["top1"] > best["top1"]
    return val["loss"] < best["loss"]


def _run(task: SpecializeTask, setup: _Setup, loaders: Any, bundle: D.DataBundle, total: int, steps_per_epoch: int,
         run_dir: Path, ctx: DistContext, line: Callable[..., None],
         callback: Callable[[str, dict[str, Any]], None] | None) -> dict[str, Any]:
    """The optimisation steps with their evaluations and checkpoints; returns the progress record (best state,
    validation curve, steps run, seconds)."""
    cfg, module, supernet, subnet = setup.cfg, task.module, task.supernet, setup.subnet
    train_loader, val_loader = loaders.train, loaders.val
    criterion, mixup = D.make_train_loss(setup.data), D.make_mixup(setup.data, bundle.num_classes)
    cpu0, wall0 = time.process_time(), time.perf_counter()

    def validate() -> dict[str, float]:
        return _val(evaluate(supernet, subnet, val_loader, mole=module, device=ctx.device))  # type: ignore[arg-type]

    global_step = 0
    if setup.state is not None:
        state = setup.state
        task.load_model_state(state["model"])
        task.optim.load_state_dict(state["optim"])
        train_loader.load_state_dict(state["loader"])
        restore_rng(state["rng"])
        global_step = int(state["global_step"])
        progress = state["progress"]
        line(f"resumed at step {global_step}/{total} (best so far: step {progress['best']['step']}, val loss "
             f"{progress['best']['val']['loss']:.4f})")
    else:
        before = validate()
        progress = {"before": before, "curve": [{"step": 0, **before}], "bad_evals": 0, "stopped_early": False,
                    "cpu_seconds": 0.0, "wall_seconds": 0.0,
                    "best": {"step": 0, "val": before, "state": copy.deepcopy(module.state_dict())}}
        line(f"step 0/{total}: val top-1 {100 * before['top1']:.2f}% loss {before['loss']:.4f} (the starting point)")
    metrics = MetricsLog(run_dir / METRICS, True, resume_step=global_step if setup.state is not None else None)
    spent = (progress["cpu_seconds"], progress["wall_seconds"])

    def checkpoint() -> None:
        progress["cpu_seconds"] = spent[0] + time.process_time() - cpu0
        progress["wall_seconds"] = spent[1] + time.perf_counter() - wall0
        save_train_state(run_dir / TRAIN_STATE, task, train_loader, global_step, {"progress": progress})

    if setup.state is None:
        checkpoint()
    window = []
    done = global_step >= total or progress["stopped_early"]
    for epoch in itertools.count(train_loader.epoch):
        if done:
            break
        train_loader.set_epoch(epoch)
        step = train_loader.order.position // cfg.batch_size
        module.train()
        supernet.train()
        for images, labels in train_loader:
            seed_step(cfg.seed, epoch, step, ctx.rank)
            task.optim.prepare(global_step)
            images, targets = images.to(ctx.device), labels.to(ctx.device)
            if mixup is not None:
                images, targets = mixup(images, targets)
            outcome = train_step(task, images, targets, subnet, criterion, ctx, False, cfg.clip_grad)
            window.append(float(getattr(outcome, "loss", outcome)))  # a StepOutcome (a float before recipes)
            step += 1
            global_step += 1
            if callback is not None:
                callback("step", {"global_step": global_step})
            if global_step % cfg.eval_every == 0 or global_step == total:
                val = validate()
                supernet.train()
                improved = _better(val, progress["best"]["val"], cfg.metric)
                if improved:
                    progress["best"] = {"step": global_step, "val": val, "state": copy.deepcopy(module.state_dict())}
                    progress["bad_evals"] = 0
                elif global_step > cfg.patience_after * total:
                    # evaluations before the patience window do not count: stopping at its start on the rise
                    # that fine-tuning first causes would keep the step-0 state (quickstart, 2026-12-07)
                    progress["bad_evals"] += 1
                train_loss = sum(window) / len(window)
                window = []
                progress["curve"].append({"step": global_step, **val, "train_loss": train_loss})
                lr = next(iter(task.optim.lrs().values()))
                metrics.write({"type": "eval", "global_step": global_step, "epoch": epoch, "train_loss": train_loss,
                               "lr": lr, "val": val, "best_step": progress["best"]["step"]})
                stop = bool(cfg.patience) and progress["bad_evals"] >= cfg.patience and global_step < total
                progress["stopped_early"] = stop
                line(f"step {global_step}/{total} (epoch {epoch + 1}): train loss {train_loss:.4f}, lr {lr:.2e}; "
                     f"val top-1 {100 * val['top1']:.2f}% loss {val['loss']:.4f}"
                     + (" (best)" if improved else f" (best: step {progress['best']['step']})")
                     + (f"; stopping: {cfg.patience} evaluations without a better validation {cfg.metric}" if stop else ""))
                checkpoint()
                if callback is not None:
                    callback("eval", {"global_step": global_step, "val": val})
                if stop:
                    done = True
                    break
            if global_step >= total:
                done = True
                break
    progress["steps_run"] = global_step
    return progress


def _finish(task: SpecializeTask, setup: _Setup, loaders: Any, bundle: D.DataBundle, total: int,
            steps_per_epoch: int, run_dir: Path, progress: dict[str, Any], lora: dict[str, Any] | None,
            line: Callable[..., None]) -> SpecializeResult:
    """Write the final deltas, summary.json, the finished state and specialize.json (last)."""
    cfg, module = setup.cfg, task.module
    before, after, best = progress["before"], progress["best"]["val"], progress["best"]["step"]
    atomic_save_safetensors(run_dir / DELTAS_FILE, module.to_state(), metadata={"format": RECORD_FORMAT})
    key = {"weights": cfg.weights, "steps_run": progress["steps_run"], "best_step": best,
           "val_top1_before": before["top1"], "val_top1_after": after["top1"],
           "cpu_seconds": round(progress["cpu_seconds"], 1)}
    atomic_write_json(run_dir / SUMMARY_JSON, key)
    save_train_state(run_dir / TRAIN_STATE, task, loaders.train, progress["steps_run"], {"progress": progress},
                     finished=True)
    routing = module.routing.tolist() if module.routing is not None else None
    record = {
        "format": RECORD_FORMAT, "version": RECORD_VERSION,
        "subnet": setup.subnet.to_dict(), "subnet_source": setup.subnet_source, "space": task.space.to_dict(),
        "source": source_record(setup.loaded), "weights": cfg.weights, "lora": lora, "routing": routing,
        "budget_steps": total, "steps_run": progress["steps_run"], "best_step": best,
        "epochs_run": progress["steps_run"] / steps_per_epoch, "stopped_early": progress["stopped_early"],
        "val_before": before, "val_after": after, "val_curve": progress["curve"],
        "val_split": {"file": SPLIT_FILE, "images": len(bundle.val), "first_n": cfg.val_subset,
                      "held_out": len(bundle.split["val_indices"]), "seed": bundle.split["seed"]},
        "test_split_read": False, "train_images": len(bundle.train), "config": cfg.to_dict(),
        "cpu_seconds": progress["cpu_seconds"], "wall_seconds": progress["wall_seconds"],
        SHA256_KEY: hashes_of(run_dir, HASHED_FILES),
    }
    atomic_write_json(run_dir / SPECIALIZE_JSON, record)
    gain = 100 * (after["top1"] - before["top1"])
    line(f"done: {progress['steps_run']} steps, best at step {best}; val top-1 {100 * before['top1']:.2f}% -> "
         f"{100 * after['top1']:.2f}% ({gain:+.2f} points), loss {before['loss']:.4f} -> {after['loss']:.4f}; "
         f"{progress['wall_seconds']:.0f} s ({progress['cpu_seconds']:.0f} CPU s); {run_dir / DELTAS_FILE}", loud=True)
    return SpecializeResult(run_dir, record)
