"""The training loop shared by supernet training, MoLE training and full fine-tuning.

One uniformly sampled subnet per step, the same on every rank: the subnet of step `s` of epoch `e` is drawn from
`random.Random(f"{seed}:{e}:{s}")`. With sandwich sampling (`LoopConfig.sampling`) a step trains the largest, the
smallest, that same subnet and `sandwich_random - 1` more drawn from `random.Random(f"{seed}:{e}:{s}:{k}")`, so
every recipe sees the same subnet sequence; with `distill` all but the largest learn from the largest's soft
logits (in-place distillation), and the step's gradient is the mean over its subnets. The loop counts the
subnet forward and backward passes, so recipes can be compared at equal steps and at equal passes. The global
torch/numpy/python RNGs are re-seeded every step from (seed, epoch, step, rank) (drop-path masks, mixup), so a
run resumed from a mid-epoch checkpoint repeats exactly the steps an uninterrupted run would have taken
(bit-for-bit on CPU for Fashion-MNIST; for folder data the order is exact, the worker-side augmentation draws
are not).

Checkpoints (`train_state.pt`, written atomically by rank 0 at every epoch end and every `save_every_steps`
steps) hold only tensors, numbers, strings, lists and dicts, so `torch.load(weights_only=True)` reads them:
the trainable weights, the optimiser and scheduler states, the data-loader position, the RNG states and the
run's configuration. Each write records the state's sha256 (and train_config.json's) in `train_state.sha256.json`
(`integrity.write_hashed`), checked on resume: flipped bytes that still unpickle, or another run's state, are
refused. A non-finite loss raises `TrainingDiverged` before the optimiser step, so the last
checkpoint on disk is the last good one.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taslora_core.artifact_read import read_json_artifact
from taslora_core.atomic import atomic_write_text
from taslora_core.checkpoint import load_torch
from taslora_core.integrity import check_hashed, write_hashed
from taslora_core.distributed import DistContext, all_reduce_grads
from taslora_core.train.optim import OptimizerSet
from taslora_core.train.progress import EpochProgress
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, sample_subnet, smallest_subnet
from taslora_core.train.run_files import TRAIN_CONFIG

TRAIN_STATE = "train_state.pt"
TRAIN_STATE_RECORD = "train_state.sha256.json"  # the sha256 of train_state.pt (and train_config.json)
METRICS = "metrics.jsonl"
STATE_FORMAT = "taslora-train-state"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


# ---------------------------------------------------------------------- seeding
def subnet_rng(seed: int, epoch: int, step: int) -> random.Random:
    """The generator of the subnet of (epoch, step): identical on every rank and after a resume."""
    return random.Random(f"{seed}:{epoch}:{step}")


def subnet_for_step(space: SearchSpace, seed: int, epoch: int, step: int) -> Subnet:
    """The subnet trained at step `step` of epoch `epoch`."""
    return sample_subnet(space, subnet_rng(seed, epoch, step))


def step_subnets(space: SearchSpace, seed: int, epoch: int, step: int, sampling: str = "uniform",
                 sandwich_random: int = 1) -> list[Subnet]:
    """The subnets trained at (epoch, step): [the uniform subnet], or with "sandwich" [largest, smallest, the
    uniform subnet, `sandwich_random - 1` more random ones] (the largest first: it is the distillation teacher)."""
    subnet = subnet_for_step(space, seed, epoch, step)
    if sampling == "uniform":
        return [subnet]
    if sampling != "sandwich":
        raise ValueError(f"unknown sampling '{sampling}'; choose uniform or sandwich")
    extra = [sample_subnet(space, random.Random(f"{seed}:{epoch}:{step}:{k}")) for k in range(1, sandwich_random)]
    return [largest_subnet(space), smallest_subnet(space), *([subnet] if sandwich_random > 0 else []), *extra]


def passes_per_step(cfg: "LoopConfig") -> int:
    """Subnet forward (and backward) passes of one step."""
    return 1 if cfg.sampling == "uniform" else 2 + cfg.sandwich_random


def seed_step(seed: int, epoch: int, step: int, rank: int) -> None:
    """Re-seed torch (all devices), numpy and python `random` for one step of one rank."""
    s = np.random.SeedSequence([seed, epoch, step, rank, 7]).generate_state(2, dtype=np.uint32)
    torch.manual_seed(int(s[0]) << 32 | int(s[1]))
    np.random.seed(int(s[0]))
    random.seed(int(s[1]))


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as weights-only-loadable values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- the task interface
class TrainTask:
    """What the loop trains. Subclasses (`taslora_core.train.tasks`) define the model side."""

    kind = "task"
    space: SearchSpace
    module: nn.Module
    optim: OptimizerSet

    def forward(self, images: torch.Tensor, subnet: Subnet) -> torch.Tensor:
        """Training logits of `subnet`."""
        raise NotImplementedError

    def model_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors (what a checkpoint must restore)."""
        raise NotImplementedError

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of `model_state`."""
        raise NotImplementedError

    def epoch_eval(self) -> dict[str, Any]:
        """Validation numbers logged at each epoch end (called on every rank)."""
        return {}

    def auxiliary_loss(self, subnets: list[Subnet]) -> tuple[torch.Tensor, dict[str, float]] | None:
        """A term the task adds to the step's loss (and the values to log), or None (the default)."""
        return None


def autocast(ctx: DistContext, amp: bool):
    """bf16 autocast on the run's device when `amp`, else a no-op context."""
    if not amp:
        return nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)


@dataclass
class StepOutcome:
    """What one optimisation step did: its mean training loss, the subnet passes it ran, logged extras."""

    loss: float
    forward: int = 1
    backward: int = 1
    extras: dict[str, float] = field(default_factory=dict)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, times T^2 (Hinton's scale), mean over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * (t * t)


def _backward_subnets(task: TrainTask, images: torch.Tensor, targets: torch.Tensor, subnets: list[Subnet],
                      criterion: nn.Module, ctx: DistContext, amp: bool, temperature: float | None) -> torch.Tensor:
    """Forward and backward every subnet of a multi-subnet step, one at a time (gradients accumulate, each loss
    divided by their number); the first subnet learns from `targets` and, with `temperature`, is the teacher of
    the others. Returns the mean loss (detached)."""
    total = torch.zeros((), device=images.device)
    teacher = None
    for i, subnet in enumerate(subnets):
        with autocast(ctx, amp):
            logits = task.forward(images, subnet).float()
        if i == 0 or temperature is None:
            loss = criterion(logits, targets)
            if temperature is not None:
                teacher = logits.detach()
        else:
            loss = distill_loss(logits, teacher, temperature)  # type: ignore[arg-type]
        (loss / len(subnets)).backward()
        total = total + loss.detach()
    return total / len(subnets)


def train_step(
    task: TrainTask,
    images: torch.Tensor,
    targets: torch.Tensor,
    subnet: Subnet | list[Subnet],
    criterion: nn.Module,
    ctx: DistContext,
    amp: bool = False,
    clip_grad: float | None = None,
    distill_temperature: float | None = None,
) -> StepOutcome:
    """One optimisation step on `subnet` or on a list of subnets (sandwich; `distill_temperature` distils all
    but the first from the first); learning rates already set by `task.optim.prepare`. Returns the mean loss
    over the subnets and the passes run."""
    subnets = [subnet] if isinstance(subnet, Subnet) else list(subnet)
    task.optim.zero_grad()
    if len(subnets) == 1:
        with autocast(ctx, amp):
            logits = task.forward(images, subnets[0])
        loss = criterion(logits.float(), targets)
        loss.backward()
    else:
        loss = _backward_subnets(task, images, targets, subnets, criterion, ctx, amp, distill_temperature)
    extras: dict[str, float] = {}
    aux = task.auxiliary_loss(subnets)
    if aux is not None:
        term, extras = aux
        if term.requires_grad:  # e.g. not while the router is frozen in warm-up
            term.backward()
    mean_loss = all_reduce_grads(task.optim.trainable_params(), loss, ctx)
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(f"training loss became {mean_loss}")
    if clip_grad:
        torch.nn.utils.clip_grad_norm_([p for p in task.optim.trainable_params() if p.grad is not None], clip_grad)
    task.optim.step()
    return StepOutcome(mean_loss, len(subnets), len(subnets), extras)


# ---------------------------------------------------------------------- logging
class MetricsLog:
    """Append-only JSON lines (rank 0). On resume, lines past the resumed step are dropped first."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if int(rec.get("global_step", 0)) <= resume_step:
                    kept.append(json.dumps(rec))
            atomic_write_text(path, "".join(k + "\n" for k in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------- the loop
@dataclass
class LoopConfig:
    """Loop settings (the rest of a run's settings live in its own config)."""

    epochs: int
    seed: int = 0
    save_every_steps: int = 0
    log_every: int = 10
    amp: bool = False
    clip_grad: float | None = None
    quiet: bool = False
    sampling: str = "uniform"  # or "sandwich" (module docstring)
    sandwich_random: int = 1
    distill: bool = False
    distill_temperature: float = 1.0


@dataclass
class LoopResult:
    """What the loop measured (passes: subnet forward / backward passes, e.g. 3 per step for a sandwich of 3)."""

    global_step: int = 0
    last_loss: float = float("nan")
    images: int = 0
    train_seconds: float = 0.0
    epochs: list[dict[str, Any]] = field(default_factory=list)
    forward_passes: int = 0
    backward_passes: int = 0

    @property
    def images_per_s(self) -> float:
        """Training throughput over all ranks (steps only, evaluation excluded)."""
        return self.images / self.train_seconds if self.train_seconds > 0 else 0.0


def save_train_state(
    path: Path, task: TrainTask, loader: Any, global_step: int, extra: dict[str, Any], finished: bool = False
) -> None:
    """Atomically write the resumable training state and record its sha256 in `TRAIN_STATE_RECORD`."""
    state = {
        "format": STATE_FORMAT,
        "version": 1,
        "kind": task.kind,
        "global_step": int(global_step),
        "epoch": int(loader.epoch),
        "finished": bool(finished),
        "model": {k: v.detach().cpu().clone() for k, v in task.model_state().items()},
        "optim": task.optim.state_dict(),
        "loader": dict(loader.state_dict()),
        "rng": capture_rng(),
        **extra,
    }
    path = Path(path)
    write_hashed(path, lambda tmp: torch.save(state, tmp), path.parent / TRAIN_STATE_RECORD,
                 also=[path.parent / TRAIN_CONFIG])


def load_train_state(path: Path) -> dict[str, Any]:
    """Read a `train_state.pt` with weights-only loading, after checking the sha256 its run recorded (runs
    written before the record existed have none and load unchecked)."""
    fix = "resume from a copy of the run folder, or start a new run"
    path = Path(path)
    record = path.parent / TRAIN_STATE_RECORD
    if record.exists() and path.exists():
        doc = read_json_artifact(record, "training state record", fix)
        check_hashed(path, doc, record, fix)
    state = load_torch(path, "training state", fix)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"training state {path} is not a taslora training state; {fix}")
    return state


def run_loop(
    task: TrainTask,
    train_loader: Any,
    criterion: nn.Module,
    mixup_fn: Callable | None,
    ctx: DistContext,
    cfg: LoopConfig,
    run_dir: Path,
    extra_state: dict[str, Any],
    resume_state: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    callback: Callable[[str, dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Train `task` for `cfg.epochs` epochs (continuing `resume_state` if given).

    `callback(event, info)` is called on every rank with event "start" (info: global_step, model) before the first
    step and "epoch_end" (info: epoch, global_step, val, model) after each epoch's evaluation; tests and notebooks
    use it to inspect the model mid-run.
    """
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set ({train_loader.order.num_samples} images per rank) is smaller than one batch "
            f"({train_loader.batch_size}); lower --batch-size or raise --train-subset"
        )
    batch = train_loader.batch_size
    state_path = run_dir / TRAIN_STATE
    result = LoopResult()
    if resume_state is not None:
        task.load_model_state(resume_state["model"])
        task.optim.load_state_dict(resume_state["optim"])
        train_loader.load_state_dict(resume_state["loader"])
        restore_rng(resume_state["rng"])
        result.global_step = int(resume_state["global_step"])
        result.forward_passes = result.backward_passes = result.global_step * passes_per_step(cfg)
    metrics = MetricsLog(run_dir / METRICS, ctx.is_main, resume_step=result.global_step if resume_state else None)
    if callback is not None:
        callback("start", {"global_step": result.global_step, "model": task.module})
    say = log if (log is not None and ctx.is_main) else (lambda _msg: None)
    window_t, window_imgs = time.perf_counter(), 0

    bar_on = ctx.is_main and not cfg.quiet
    for epoch in range(train_loader.epoch, cfg.epochs):
        train_loader.set_epoch(epoch)
        step = train_loader.order.position // batch
        task.module.train()
        epoch_loss, epoch_steps, epoch_imgs = 0.0, 0, 0
        t_start = time.perf_counter()
        with EpochProgress(bar_on, epoch, cfg.epochs, steps_per_epoch, step) as bar:
            for images, labels in train_loader:
                global_step = epoch * steps_per_epoch + step
                subnets = step_subnets(task.space, cfg.seed, epoch, step, cfg.sampling, cfg.sandwich_random)
                subnet = subnets[2] if cfg.sampling == "sandwich" and cfg.sandwich_random > 0 else subnets[0]
                seed_step(cfg.seed, epoch, step, ctx.rank)
                task.optim.prepare(global_step)
                images = images.to(ctx.device, non_blocking=True)
                targets = labels.to(ctx.device, non_blocking=True)
                if mixup_fn is not None:
                    images, targets = mixup_fn(images, targets)
                t0 = time.perf_counter()
                try:
                    outcome = train_step(task, images, targets, subnets, criterion, ctx, cfg.amp, cfg.clip_grad,
                                         cfg.distill_temperature if cfg.distill else None)
                except TrainingDiverged as err:
                    kept = (f"last good checkpoint {state_path} kept" if state_path.exists()
                            else "no checkpoint was written yet")
                    raise TrainingDiverged(
                        f"{err} at epoch {epoch + 1} step {step + 1} (global step {global_step + 1}); run stopped, "
                        f"{kept}; start a new run with a lower learning rate or --clip-grad"
                    ) from None
                result.train_seconds += time.perf_counter() - t0
                loss = outcome.loss
                result.forward_passes += outcome.forward
                result.backward_passes += outcome.backward
                n_imgs = images.shape[0] * ctx.world_size
                result.images += n_imgs
                window_imgs += n_imgs
                epoch_imgs += n_imgs
                step += 1
                result.global_step = global_step + 1
                result.last_loss = loss
                epoch_loss += loss
                epoch_steps += 1
                lrs = task.optim.lrs()
                if ctx.is_main and (result.global_step % max(cfg.log_every, 1) == 0 or step == steps_per_epoch):
                    now = time.perf_counter()
                    ips = window_imgs / max(now - window_t, 1e-9)
                    window_t, window_imgs = now, 0
                    metrics.write({"type": "step", "epoch": epoch, "step": step, "global_step": result.global_step,
                                   "loss": loss, "lr": lrs, "images_per_s": ips, "subnet": subnet.to_dict(),
                                   "forward_passes": result.forward_passes, **outcome.extras})
                if bar_on:
                    lr_text = " ".join(f"{k} {v:.2e}" for k, v in lrs.items())
                    rate = epoch_imgs / max(time.perf_counter() - t_start, 1e-9)
                    bar.update(f"loss {loss:.4f}, lr {lr_text}, {rate:.0f} img/s")
                if cfg.save_every_steps and result.global_step % cfg.save_every_steps == 0 and ctx.is_main:
                    save_train_state(state_path, task, train_loader, result.global_step, extra_state)
        # ---- epoch end (the loader has moved to the next epoch)
        epoch_seconds = time.perf_counter() - t_start
        val = task.epoch_eval()
        record = {"type": "epoch", "epoch": epoch, "global_step": result.global_step,
                  "train_loss": epoch_loss / max(epoch_steps, 1), "epoch_seconds": epoch_seconds,
                  "images_per_s": epoch_imgs / max(epoch_seconds, 1e-9), "val": val}
        result.epochs.append(record)
        metrics.write(record)
        if ctx.is_main:
            save_train_state(state_path, task, train_loader, result.global_step, extra_state)
        say(_epoch_line(epoch, cfg.epochs, record))
        if callback is not None:
            callback("epoch_end", {"epoch": epoch, "global_step": result.global_step, "val": val, "model": task.module})
    return result


def _epoch_line(epoch: int, epochs: int, record: dict[str, Any]) -> str:
    parts = [f"epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f}, {record['images_per_s']:.0f} img/s"]
    for name, res in record["val"].items():
        parts.append(f"val {name} top-1 {100 * res['top1']:.2f}% loss {res['loss']:.4f}")
    return "; ".join(parts)
