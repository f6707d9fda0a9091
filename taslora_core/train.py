"""Supernet training, MoLE training (and its baselines), supernet import and checkpoint evaluation.

Python API (the `taslora supernet train|import`, `train` and `eval` commands call exactly these):

    run = train_supernet(SupernetTrainConfig(space="fmnist", epochs=10))        # -> RunResult(run_dir, summary)
    run = train_mole(MoLETrainConfig(supernet=None, epochs=10))                 # latest supernet of the workdir
    run = train_mole(MoLETrainConfig(mode="finetune"))                          # the full fine-tuning baseline
    path = import_supernet("supernet-tiny.pth", "autoformer-t", workdir)       # official AutoFormer checkpoint
    out = evaluate_run("taslora-runs/mole/<run>", "largest", use_experts=True)  # -> EvalReport

Run folders (`taslora_core.workspace`):

    supernets/<run>/  supernet.safetensors  space.json (space, data, split, train, kind[, finetuned_from...])
                      split.json  metrics.jsonl  summary.json  train_config.json  train_state.pt
    mole/<run>/       mole.safetensors  mole.json (config, space, supernet_dir, supernet_sha256, data, split,
                      train, mode)  split.json  metrics.jsonl  summary.json  train_config.json  train_state.pt

`--mode finetune` (full fine-tuning of the supernet, no MoLE, same budget) writes a *supernets* run whose
space.json has `finetuned_from` (and its sha256) and `mode: "finetune"`; eval, search and export open it like
any supernet. `train` without `--supernet` uses the newest supernet run that is not such a fine-tuned baseline.

The weights file (`supernet.safetensors` / `mole.safetensors`) is written last: it marks the run finished.
`train_state.pt` is the resumable state (written at every epoch end, every `save_every_steps` steps, and once
more at the end with `finished: True`). `resume="latest"` continues the newest unfinished run of the same kind
(supernet training, or `train` with the given mode) in the workdir; `resume=PATH` continues that run folder
(its mode comes from the run). A
resumed run takes every setting from its own `train_config.json`; only runtime options (quiet, device,
threads, workers, workdir) come from the new call.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from taslora_core import data as D
from taslora_core.checkpoint import (
    SPACE_JSON, SUPERNET_WEIGHTS, CheckpointError, atomic_write_json, file_sha256, load_supernet, save_supernet,
)
from taslora_core.distributed import (
    DistContext, broadcast_object, broadcast_tensors, init_distributed, resolve_device, shutdown,
)
from taslora_core.evaluate import EvalResult, evaluate
from taslora_core.mole import MoLEConfig, MoLEModel
from taslora_core.mole_io import save_mole
from taslora_core.optim import finetune_optimizers, mole_optimizers, scaled_lr, supernet_optimizers
from taslora_core.router import ROUTER_INITS, ROUTER_KINDS, RouterConfig
from taslora_core.run_data import RecordedData, data_config_for, resolve_run_data
from taslora_core.run_data import describe_data as _describe_data
from taslora_core.run_io import is_supernet_dir, load_checkpoint, resolve_mole, resolve_supernet
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, sample_distinct, smallest_subnet
from taslora_core.supernet import Supernet
from taslora_core.train_loop import (
    TRAIN_STATE, LoopConfig, LoopResult, TrainingDiverged, TrainTask, autocast, load_train_state, run_loop,
    save_train_state,
)
from taslora_core.workspace import DEFAULT_WORKDIR, KINDS, WorkspaceError, new_run, runs

__all__ = [
    "TrainConfig", "SupernetTrainConfig", "MoLETrainConfig", "RunResult", "EvalReport", "TrainingDiverged",
    "MODES", "train_supernet", "train_mole", "import_supernet", "evaluate_run", "default_supernet",
    "find_resumable", "set_drop_path", "summary_subnets",
]

MODES = ("mole", "single-lora", "finetune")
SPLIT_FILE = "split.json"
SUMMARY = "summary.json"
TRAIN_CONFIG = "train_config.json"
# Options that belong to one invocation, not to the run: a resumed run takes them from the new call.
RUNTIME_FIELDS = ("quiet", "device", "threads", "num_workers", "workdir")

Log = Callable[[str], None]


# ====================================================================== configuration
SETTING_KEYS = ("help", "flag", "cli_type")


def setting(default: Any, help: str, flag: str | None = None, cli_type: Any = None) -> Any:
    """A config field with its command-line documentation: the single source of the option's default and help.

    `help` (with units) documents the option; `flag` is its spelling when it is not `--<name-with-dashes>`
    (e.g. "--amp/--no-amp"); `cli_type` is its command-line type when it differs from the field's (a str field
    read as a Path). The CLI (`taslora_cli.config_options`) builds its options from this metadata; fields made
    with plain defaults have no option of their own.
    """
    return field(default=default, metadata={"help": help, "flag": flag, "cli_type": cli_type})


@dataclass
class TrainConfig:
    """Settings every training command shares."""

    workdir: str = str(DEFAULT_WORKDIR)  # the CLI's shared --workdir option
    seed: int = 0  # the CLI's shared --seed option
    epochs: int = setting(10, "Training epochs.")
    batch_size: int = setting(128, "Images per step on each rank (total = this x ranks).")
    data: str = setting(
        "fmnist", "'fmnist' (Fashion-MNIST, Debian package) or an ImageNet-style folder PATH/{train,val}/<class>/*.")
    val_size: int = setting(10000, "Held-out validation images carved from the training set (capped at 20%).")
    val_subset: int | None = setting(None, "Evaluate on the first N held-out images only (epoch ends and summary).")
    train_subset: int | None = setting(
        None, "Train on the first N images of the (seeded, shuffled) training split only.")
    # None: the data preset's value
    mixup: float | None = setting(None, "Mixup alpha (default: the data preset's: 0 for fmnist, 0.8 for folders).")
    cutmix: float | None = setting(None, "CutMix alpha (default: preset's: 0 fmnist, 1.0 folders).")
    smoothing: float | None = setting(None, "Label smoothing (default: preset's 0.1).")
    auto_augment: str | None = setting(  # "none" switches it off
        None, "timm auto-augment policy for folder data, or 'none' (default: preset's rand-m9-mstd0.5-inc1 for folders).")
    re_prob: float | None = setting(
        None, "Random-erasing probability for folder data (default: preset's 0.25 for folders).")
    drop_path: float = setting(0.1, "Max stochastic-depth rate (AutoFormer 0.1).")
    warmup_epochs: int = setting(1, "Warm-up epochs.")
    weight_decay: float = setting(0.05, "AdamW weight decay.")
    min_lr: float = setting(1e-5, "Learning rate at the end of the cosine.")
    device: str = setting("auto", "auto (CUDA if available), cpu, cuda or cuda:N.")
    amp: bool | None = setting(None, "bf16 autocast (default: on for CUDA, off on CPU).", flag="--amp/--no-amp")
    threads: int | None = setting(None, "torch CPU threads (default: torch's choice).")
    save_every_steps: int = setting(0, "Also checkpoint every N steps (0: only at epoch ends).")
    log_every: int = setting(10, "Write a metrics.jsonl step record every N steps.")
    clip_grad: float | None = setting(
        None, "Clip the gradient norm to this value (default: no clipping, as AutoFormer).")
    eval_batch_size: int = setting(512, "Batch size of evaluation.")
    num_workers: int = setting(4, "Data-loader workers for folder data.", flag="--workers")
    summary_subnets: int = setting(3, "Random subnets evaluated in summary.json besides the largest and smallest.")
    name: str | None = setting(None, "Suffix of the run folder name.")
    quiet: bool = setting(False, "No progress bars.", flag="--quiet")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "TrainConfig":
        """Inverse of `to_dict` (unknown keys, e.g. options of older versions, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass
class SupernetTrainConfig(TrainConfig):
    """`taslora supernet train`: AutoFormer's recipe (`autoformer.md` s6)."""

    space: str = setting("fmnist", "Search space preset (fmnist, autoformer-t/s/b) or YAML.")
    lr: float = setting(
        5e-4, "Base learning rate per 512 images (AutoFormer 5e-4); the run uses lr x total batch / 512.")
    warmup_lr: float = setting(1e-6, "Learning rate at the start of warm-up.")


@dataclass
class MoLETrainConfig(TrainConfig):
    """`taslora train`: experts + router on a frozen supernet (or a baseline, see `mode`)."""

    supernet: str | None = setting(
        None, "Supernet run folder (default: the newest non-fine-tuned supernet run in --workdir).",
        cli_type=Path | None)
    mode: str = setting(
        "mole", "mole (TAS-LoRA), single-lora (K=1 baseline) or finetune (full fine-tuning baseline; writes a "
        "supernets run).")
    experts: int | None = setting(None, "Experts K per layer (default: one per architecture group).")
    rank: int = setting(8, "LoRA rank r of every expert.")
    lora_alpha: float = setting(
        1.0, "LoRA scale numerator: an expert adds (alpha / rank) U D (paper: 1, i.e. U D / r).")
    router: str = setting("lstm", "Router core: lstm, gru or mlp (block-wise, no recurrence).")
    router_init: str = setting("group", "group (group-wise init, TAS-LoRA) or random.")
    router_depth: bool = setting(
        False, "Feed the depth to the router too (groups then include depth).", flag="--router-depth/--no-router-depth")
    beta: float = setting(3.0, "Group-wise init: bias of a group's own expert.")
    expert_lr: float = setting(5e-4, "Experts' AdamW LR (also the LR of --mode finetune).")
    router_lr: float = setting(0.1, "Router's SGD LR (momentum 0.9).")
    warmup_start_lr: float = setting(1e-5, "Expert LR at the start of warm-up.")
    warmup_epochs: int = setting(
        1, "Epochs with the router frozen and the expert LR rising linearly from --warmup-start-lr (paper: 5 of 50).")
    min_lr: float = setting(1e-6, "Expert LR at the end of the cosine (the router's goes to 0).")
    momentum: float = 0.9  # the router's SGD momentum (no option)


@dataclass
class RunResult:
    """A finished run: its folder and the numbers of its summary.json."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


# ====================================================================== helpers
def set_drop_path(supernet: Supernet, rate: float) -> None:
    """Set the stochastic-depth rates (by position in the supernet, as AutoFormer) to max `rate`."""
    depth = supernet.space.super_depth
    supernet.drop_path_rates = [rate * i / max(depth - 1, 1) for i in range(depth)]


def summary_subnets(space: SearchSpace, seed: int, count: int) -> list[tuple[str, Subnet]]:
    """Largest, smallest and `count` distinct random subnets (fixed by `seed`): what summary.json reports."""
    out = [("largest", largest_subnet(space)), ("smallest", smallest_subnet(space))]
    drawn = sample_distinct(space, count, f"summary:{seed}", taken={sn.key() for _, sn in out}, max_tries=1000)
    return out + [(f"random_{i}", sn) for i, sn in enumerate(drawn)]


def _data_config(cfg: TrainConfig, space: SearchSpace) -> D.DataConfig:
    return data_config_for(cfg.data, space, cfg.to_dict())


def _check_classes(bundle: D.DataBundle, space: SearchSpace) -> None:
    if bundle.num_classes != space.num_classes:
        raise ValueError(
            f"the data has {bundle.num_classes} classes but search space '{space.name}' has {space.num_classes}; "
            "use a space (YAML) whose num_classes matches the data"
        )


def _check_common(cfg: TrainConfig, dc: D.DataConfig) -> None:
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if not 0 <= cfg.warmup_epochs <= cfg.epochs:
        raise ValueError(f"--warmup-epochs must be in 0..--epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
    if dc.mixup_active and cfg.batch_size % 2:
        raise ValueError(f"mixup/cutmix needs an even --batch-size, got {cfg.batch_size}")
    if cfg.save_every_steps < 0:
        raise ValueError("--save-every-steps must be >= 0")
    if not 0.0 <= cfg.drop_path < 1.0:
        raise ValueError(f"--drop-path must be in [0, 1), got {cfg.drop_path}")


def _amp(cfg: TrainConfig, ctx: DistContext) -> bool:
    return (ctx.device.type == "cuda") if cfg.amp is None else bool(cfg.amp)


def _rel(path: Path, start: Path, workdir: Path) -> str:
    """`path` relative to `start` when both live in `workdir`, else absolute (what mole.json records)."""
    path, start, workdir = path.resolve(), start.resolve(), workdir.resolve()
    try:
        path.relative_to(workdir)
        start.relative_to(workdir)
    except ValueError:
        return str(path)
    return os.path.relpath(path, start)


def _quiet_log(log: Log | None, ctx: DistContext) -> Log:
    return log if (log is not None and ctx.is_main) else (lambda _m: None)


def _run_kind_dir(kind: str) -> str:
    return "mole" if kind in ("mole", "single-lora") else "supernets"


def find_resumable(workdir: str | Path, kind: str) -> Path:
    """Newest unfinished run of `kind` (supernet, mole, single-lora or finetune) that has a training state."""
    kdir = _run_kind_dir(kind)
    found = []
    for run in runs(workdir, kdir, finished_only=False):
        if (run.path / KINDS[kdir]).exists() or not (run.path / TRAIN_STATE).exists():
            continue
        try:
            doc = json.loads((run.path / TRAIN_CONFIG).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if doc.get("kind") == kind:
            found.append(run.path)
    if not found:
        raise WorkspaceError(f"no unfinished {kind} run with a checkpoint in workspace {workdir}; nothing to resume")
    return found[-1]


def _open_resume(
    resume: str, workdir: str, latest_kind: str, kinds: tuple[str, ...]
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The run to resume ('latest': newest unfinished run of `latest_kind`), its train_config and its state."""
    run_dir = find_resumable(workdir, latest_kind) if resume == "latest" else Path(resume)
    if not (run_dir / TRAIN_STATE).exists() or not (run_dir / TRAIN_CONFIG).exists():
        raise CheckpointError(f"{run_dir} holds no resumable training state ({TRAIN_STATE}); pass a run folder or 'latest'")
    doc = json.loads((run_dir / TRAIN_CONFIG).read_text())
    kind = doc.get("kind")
    if kind not in kinds:
        command = "taslora supernet train" if kind == "supernet" else "taslora train"
        raise ValueError(f"{run_dir} is a {kind} run; resume it with `{command} --resume {run_dir}`")
    if (run_dir / KINDS[_run_kind_dir(kind)]).exists():
        raise ValueError(f"{run_dir} already finished; nothing to resume")
    return run_dir, doc, load_train_state(run_dir / TRAIN_STATE)


def _with_runtime(saved: TrainConfig, now: TrainConfig) -> TrainConfig:
    return dataclasses.replace(saved, **{k: getattr(now, k) for k in RUNTIME_FIELDS if hasattr(now, k)})


def _setup_threads(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))


def _split_note(split: dict[str, Any], bundle: D.DataBundle) -> str:
    return f"{len(bundle.train)} train / {len(split['val_indices'])} held-out val images (seed {split['seed']})"


# ====================================================================== tasks
class SupernetTask(TrainTask):
    """Train all supernet weights (supernet training, and the full fine-tuning baseline)."""

    kind = "supernet"

    def __init__(self, supernet: Supernet, optim, val_loader, eval_subnets, ctx: DistContext, amp: bool) -> None:
        self.supernet = self.module = supernet
        self.space, self.optim = supernet.space, optim
        self.val_loader, self.eval_subnets, self.ctx, self.amp = val_loader, eval_subnets, ctx, amp

    def forward(self, images: torch.Tensor, subnet: Subnet) -> torch.Tensor:
        return self.supernet(images, subnet)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.supernet.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.supernet.load_state_dict_strict(state, source="training state")

    def evaluate(self, subnet: Subnet, use_experts: bool = True) -> EvalResult:
        with autocast(self.ctx, self.amp):
            return evaluate(self.supernet, subnet, self.val_loader, device=self.ctx.device)

    def epoch_eval(self) -> dict[str, Any]:
        return {name: self.evaluate(sn).to_dict() for name, sn in self.eval_subnets}


class FinetuneTask(SupernetTask):
    """The full fine-tuning baseline."""

    kind = "finetune"


class MoLETask(TrainTask):
    """Train experts + router of a MoLE model on its frozen supernet."""

    kind = "mole"

    def __init__(self, model: MoLEModel, optim, val_loader, eval_subnets, ctx: DistContext, amp: bool) -> None:
        self.model = self.module = model
        self.space, self.optim = model.space, optim
        self.val_loader, self.eval_subnets, self.ctx, self.amp = val_loader, eval_subnets, ctx, amp

    def forward(self, images: torch.Tensor, subnet: Subnet) -> torch.Tensor:
        return self.model(images, subnet)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.trainable_state()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        want = self.model.trainable_state()
        if sorted(want) != sorted(state):
            raise CheckpointError("training state does not match this MoLE model (experts/router keys differ)")
        with torch.no_grad():
            for k, v in want.items():
                v.copy_(state[k])

    def evaluate(self, subnet: Subnet, use_experts: bool = True) -> EvalResult:
        with autocast(self.ctx, self.amp):
            return evaluate(self.model.supernet, subnet, self.val_loader, mole=self.model, use_experts=use_experts,
                            device=self.ctx.device)

    def epoch_eval(self) -> dict[str, Any]:
        return {name: self.evaluate(sn).to_dict() for name, sn in self.eval_subnets}


def _loop_config(cfg: TrainConfig, amp: bool) -> LoopConfig:
    return LoopConfig(
        epochs=cfg.epochs, seed=cfg.seed, save_every_steps=cfg.save_every_steps, log_every=cfg.log_every,
        amp=amp, clip_grad=cfg.clip_grad, quiet=cfg.quiet,
    )


def _eval_subnets(space: SearchSpace) -> list[tuple[str, Subnet]]:
    return [("largest", largest_subnet(space)), ("smallest", smallest_subnet(space))]


def _summary_entry(res: EvalResult) -> dict[str, float]:
    return {"loss": res.loss, "top1": res.top1}


def _write_run_config(run_dir: Path, kind: str, cfg: TrainConfig, extra: dict[str, Any]) -> None:
    atomic_write_json(run_dir / TRAIN_CONFIG, {"kind": kind, "config": cfg.to_dict(), **extra})


# ====================================================================== supernet training
def train_supernet(
    cfg: SupernetTrainConfig,
    resume: str | None = None,
    log: Log | None = None,
    callback: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train a supernet (one uniformly sampled subnet per step) into a new `supernets` run (or resume one)."""
    _setup_threads(cfg)
    ctx = init_distributed(cfg.device)
    say = _quiet_log(log, ctx)
    try:
        resume_state = None
        if resume:
            run_dir, doc, resume_state = _open_resume(resume, cfg.workdir, "supernet", ("supernet",))
            cfg = _with_runtime(SupernetTrainConfig.from_dict(doc["config"]), cfg)  # type: ignore[assignment]
            space = SearchSpace.from_dict(doc["space"])
            say(f"resuming {run_dir} at step {resume_state['global_step']} (settings from its {TRAIN_CONFIG})")
        else:
            space = SearchSpace.resolve(cfg.space)
        say(f"space: {space.name} ({'preset' if cfg.space.lower() == space.name else cfg.space})")
        dc = _data_config(cfg, space)
        _check_common(cfg, dc)
        split = D.load_split(run_dir / SPLIT_FILE) if resume else None
        bundle = D.build_data(dc, cfg.val_size, cfg.seed, cfg.train_subset, cfg.val_subset, split)
        _check_classes(bundle, space)
        if not resume:
            run_dir = Path(broadcast_object(str(new_run(cfg.workdir, "supernets", cfg.name or space.name)) if ctx.is_main else None, ctx))
            if ctx.is_main:
                D.save_split(run_dir / SPLIT_FILE, bundle.split)
                _write_run_config(run_dir, "supernet", cfg, {"space": space.to_dict(), "data": dc.to_dict()})
        say(f"data: {_describe_data(dc)}; split {'reused from ' + str(run_dir / SPLIT_FILE) if resume else 'new, saved to ' + str(run_dir / SPLIT_FILE)}: {_split_note(bundle.split, bundle)}")
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
        amp = _amp(cfg, ctx)
        say(f"training {cfg.epochs} epochs x {len(loaders.train)} steps, batch {cfg.batch_size} x {ctx.world_size} "
            f"rank(s), lr {lr:.3g} (base {cfg.lr:g} x {cfg.batch_size * ctx.world_size}/512), device {ctx.device}, "
            f"amp {'bf16' if amp else 'off'}")
        task = SupernetTask(supernet, optim, loaders.val, _eval_subnets(space), ctx, amp)
        extra = {"config": cfg.to_dict(), "space": space.to_dict()}
        result = run_loop(task, loaders.train, D.make_train_loss(dc), D.make_mixup(dc, bundle.num_classes), ctx,
                          _loop_config(cfg, amp), run_dir, extra, resume_state, say, callback)

        summary = {"kind": "supernet", "run": run_dir.name, "space": space.name, **_common_summary(cfg, result, bundle)}
        summary["val"] = {}
        for name, sn in summary_subnets(space, cfg.seed, cfg.summary_subnets):
            res = task.evaluate(sn)
            summary["val"][name] = {**_summary_entry(res), "subnet": sn.to_dict()}
            summary["val_count"] = res.count
        if ctx.is_main:
            save_train_state(run_dir / TRAIN_STATE, task, loaders.train, result.global_step, extra, finished=True)
            atomic_write_json(run_dir / SUMMARY, summary)
            save_supernet(run_dir, supernet, extra={
                "kind": "supernet", "data": dc.to_dict(), "split": SPLIT_FILE, "train": cfg.to_dict(),
            })
        return RunResult(run_dir, summary)
    finally:
        shutdown(ctx)


def _common_summary(cfg: TrainConfig, result: LoopResult, bundle: D.DataBundle) -> dict[str, Any]:
    return {
        "epochs": cfg.epochs, "global_steps": result.global_step, "batch_size": cfg.batch_size,
        "train_images": len(bundle.train), "final_train_loss": result.last_loss,
        "train_images_per_s": result.images_per_s, "train_seconds": result.train_seconds,
        # wall clock of the epochs (data, logging and checkpoints included; evaluation excluded)
        "epoch_images_per_s": (sum(r["images_per_s"] * r["epoch_seconds"] for r in result.epochs)
                               / max(sum(r["epoch_seconds"] for r in result.epochs), 1e-9)),
        "epoch_history": [{k: r[k] for k in ("epoch", "train_loss", "val")} for r in result.epochs],
    }


# ====================================================================== MoLE training
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


def _mole_config(cfg: MoLETrainConfig) -> MoLEConfig:
    if cfg.router not in ROUTER_KINDS:
        raise ValueError(f"unknown --router '{cfg.router}'; choose one of {', '.join(ROUTER_KINDS)}")
    if cfg.router_init not in ROUTER_INITS:
        raise ValueError(f"unknown --router-init '{cfg.router_init}'; choose one of {', '.join(ROUTER_INITS)}")
    if cfg.rank < 1:
        raise ValueError(f"--rank must be >= 1, got {cfg.rank}")
    if not cfg.lora_alpha > 0:
        raise ValueError(f"--lora-alpha must be > 0, got {cfg.lora_alpha}")
    experts = 1 if cfg.mode == "single-lora" else cfg.experts
    if experts is not None and experts < 1:
        raise ValueError(f"--experts must be >= 1, got {experts}")
    router = RouterConfig(kind=cfg.router, include_depth=cfg.router_depth, init=cfg.router_init, beta=cfg.beta)
    return MoLEConfig(num_experts=experts, rank=cfg.rank, router=router, alpha=cfg.lora_alpha)


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
    _setup_threads(cfg)
    ctx = init_distributed(cfg.device)
    say = _quiet_log(log, ctx)
    try:
        resume_state = None
        if resume:
            run_dir, doc, resume_state = _open_resume(resume, cfg.workdir, cfg.mode, MODES)
            cfg = _with_runtime(MoLETrainConfig.from_dict(doc["config"]), cfg)  # type: ignore[assignment]
            supernet_dir, source = Path(doc["supernet_dir"]), "recorded in the resumed run"
            want_sha = doc["supernet_sha256"]
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
        set_drop_path(supernet, cfg.drop_path)
        space = supernet.space
        # a new run reuses the supernet's held-out split when it was made on the same data
        recorded = None if resume else RecordedData.read(supernet_dir, SPACE_JSON, "the supernet run")
        run_data = resolve_run_data(space, recorded, cfg.data, cfg.to_dict())
        dc = run_data.config
        _check_common(cfg, dc)
        mcfg = _mole_config(cfg) if cfg.mode != "finetune" else None

        if resume:
            split, split_src = D.load_split(run_dir / SPLIT_FILE), f"reused from {run_dir / SPLIT_FILE}"
        else:
            split, split_src = run_data.split, run_data.split_source
        bundle = D.build_data(dc, cfg.val_size, cfg.seed, cfg.train_subset, cfg.val_subset, split)
        _check_classes(bundle, space)
        if not resume:
            kdir = _run_kind_dir(cfg.mode)
            default_name = {"mole": "mole", "single-lora": "single-lora", "finetune": "finetune"}[cfg.mode]
            run_dir = Path(broadcast_object(str(new_run(cfg.workdir, kdir, cfg.name or default_name)) if ctx.is_main else None, ctx))
            if ctx.is_main:
                D.save_split(run_dir / SPLIT_FILE, bundle.split)
                _write_run_config(run_dir, cfg.mode, cfg, {
                    "supernet_dir": str(supernet_dir), "supernet_sha256": sha, "space": space.to_dict(), "data": dc.to_dict(),
                })
        say(f"data: {_describe_data(dc)}; split {split_src}: {_split_note(bundle.split, bundle)}")
        say(f"run folder: {run_dir}")

        loaders = D.make_loaders(bundle, dc, cfg.batch_size, ctx.rank, ctx.world_size, cfg.seed, cfg.num_workers,
                                 cfg.eval_batch_size)
        steps_per_epoch = len(loaders.train)
        steps, warmup = steps_per_epoch * cfg.epochs, steps_per_epoch * cfg.warmup_epochs
        amp = _amp(cfg, ctx)
        torch.manual_seed(cfg.seed)
        if cfg.mode == "finetune":
            optim = finetune_optimizers(supernet, steps, warmup, cfg.expert_lr, cfg.warmup_start_lr, cfg.min_lr, cfg.weight_decay)
            broadcast_tensors(list(supernet.parameters()), ctx)
            task: TrainTask = FinetuneTask(supernet, optim, loaders.val, _eval_subnets(space), ctx, amp)
            what = f"full fine-tuning of the supernet, lr {cfg.expert_lr:g}"
        else:
            model = MoLEModel(supernet, mcfg).to(ctx.device)
            optim = mole_optimizers(model.experts, model.router, steps, warmup, cfg.expert_lr, cfg.router_lr,
                                    cfg.warmup_start_lr, cfg.min_lr, cfg.weight_decay, cfg.momentum)
            broadcast_tensors(list(model.experts.parameters()) + list(model.router.parameters()), ctx)
            task = MoLETask(model, optim, loaders.val, _eval_subnets(space), ctx, amp)
            what = (f"{cfg.mode}: K={model.num_experts} experts of rank {cfg.rank} (alpha {cfg.lora_alpha:g}), router {cfg.router} "
                    f"({cfg.router_init} init, beta {cfg.beta:g}); experts AdamW lr {cfg.expert_lr:g}, "
                    f"router SGD lr {cfg.router_lr:g} (frozen for {cfg.warmup_epochs} warm-up epoch(s))")
        say(f"training {cfg.epochs} epochs x {steps_per_epoch} steps, batch {cfg.batch_size} x {ctx.world_size} rank(s), "
            f"{what}, device {ctx.device}, amp {'bf16' if amp else 'off'}")
        extra = {"config": cfg.to_dict(), "space": space.to_dict(), "supernet_dir": str(supernet_dir), "supernet_sha256": sha}
        result = run_loop(task, loaders.train, D.make_train_loss(dc), D.make_mixup(dc, bundle.num_classes), ctx,
                          _loop_config(cfg, amp), run_dir, extra, resume_state, say, callback)

        summary: dict[str, Any] = {"kind": cfg.mode, "run": run_dir.name, "space": space.name,
                                   "supernet_dir": str(supernet_dir), **_common_summary(cfg, result, bundle)}
        if cfg.mode == "finetune":
            original = load_supernet(supernet_dir, ctx.device)
            base_task = SupernetTask(original, None, loaders.val, [], ctx, amp)
            summary["val"] = _compare(task, base_task, space, cfg, "finetuned", "original")
        else:
            summary["val"] = _compare(task, None, space, cfg, "with_experts", "without_experts")
        summary["mean_improvement"] = _mean_improvement(summary["val"])
        if ctx.is_main:
            save_train_state(run_dir / TRAIN_STATE, task, loaders.train, result.global_step, extra, finished=True)
            atomic_write_json(run_dir / SUMMARY, summary)
            common = {"data": dc.to_dict(), "split": SPLIT_FILE, "train": cfg.to_dict(), "mode": cfg.mode, "seed": cfg.seed}
            if cfg.mode == "finetune":
                save_supernet(run_dir, supernet, extra={
                    "kind": "finetune", "finetuned_from": _rel(supernet_dir, run_dir, Path(cfg.workdir)),
                    "finetuned_from_sha256": sha, **common,
                })
            else:
                save_mole(run_dir, task.model, extra={  # type: ignore[attr-defined]
                    "supernet_dir": _rel(supernet_dir, run_dir, Path(cfg.workdir)), "supernet_sha256": sha, **common,
                })
        return RunResult(run_dir, summary)
    finally:
        shutdown(ctx)


def _compare(task, base_task, space: SearchSpace, cfg: TrainConfig, new: str, old: str) -> dict[str, Any]:
    """Val loss/top-1 of the summary subnets for the trained model (`new`) and its starting point (`old`)."""
    out: dict[str, Any] = {}
    for name, sn in summary_subnets(space, cfg.seed, cfg.summary_subnets):
        res_new = task.evaluate(sn, use_experts=True)
        res_old = base_task.evaluate(sn) if base_task is not None else task.evaluate(sn, use_experts=False)
        out[name] = {new: _summary_entry(res_new), old: _summary_entry(res_old), "subnet": sn.to_dict(),
                     "count": res_new.count}
    return out


def _mean_improvement(val: dict[str, Any]) -> dict[str, float]:
    """Mean over the summary subnets of (old loss - new loss) and (new top-1 - old top-1)."""
    loss, top1 = [], []
    for entry in val.values():
        new, old = [entry[k] for k in entry if isinstance(entry[k], dict) and "loss" in entry[k]]
        loss.append(old["loss"] - new["loss"])
        top1.append(new["top1"] - old["top1"])
    n = max(len(loss), 1)
    return {"loss": sum(loss) / n, "top1": sum(top1) / n}


# ====================================================================== import
def import_supernet(ckpt: str | Path, space: str | SearchSpace, workdir: str | Path, name: str | None = None) -> Path:
    """Turn an official AutoFormer checkpoint into a new `supernets` run (weights-only loading)."""
    sp = SearchSpace.resolve(space) if isinstance(space, str) else space
    model = Supernet.from_autoformer_checkpoint(ckpt, sp)
    run_dir = new_run(workdir, "supernets", name or f"{sp.name}-imported")
    save_supernet(run_dir, model, extra={
        "kind": "imported", "imported_from": str(Path(ckpt).resolve()), "imported_sha256": file_sha256(ckpt),
    })
    atomic_write_json(run_dir / SUMMARY, {"kind": "imported", "run": run_dir.name, "space": sp.name,
                                          "imported_from": str(Path(ckpt).resolve())})
    return run_dir


# ====================================================================== evaluation of a run
@dataclass
class EvalReport:
    """What `evaluate_run` measured and where its inputs came from."""

    result: EvalResult
    checkpoint: Path
    kind: str
    subnet: Subnet
    use_experts: bool
    split: str
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {**self.result.to_dict(), "checkpoint": str(self.checkpoint), "kind": self.kind,
                "subnet": self.subnet.to_dict(), "use_experts": self.use_experts, "split": self.split}


def resolve_subnet(spec: str | Path, space: SearchSpace) -> tuple[Subnet, str]:
    """'largest', 'smallest' or a subnet file; checked to lie in the search space."""
    text = str(spec)
    if text.lower() == "largest":
        return largest_subnet(space), f"the largest subnet of space {space.name}"
    if text.lower() == "smallest":
        return smallest_subnet(space), f"the smallest subnet of space {space.name}"
    return Subnet.load(text).check_in_space(space), f"file {text}"


def evaluate_run(
    ckpt: str | Path | None,
    subnet: str | Path,
    use_experts: bool = True,
    split: str = "val",
    data: str | None = None,
    workdir: str | Path = "taslora-runs",
    seed: int = 0,
    val_size: int = 10000,
    val_subset: int | None = None,
    batch_size: int = 512,
    device: str = "auto",
    amp: bool | None = None,
) -> EvalReport:
    """Top-1/loss of one subnet of a MoLE run (with or without its experts) or of a supernet run.

    The data defaults to what the run recorded; `val` is the run's held-out split (`split.json`) when it has one
    for that data, else a fresh seeded split; `test` is Fashion-MNIST's t10k set or the folder's `val/`.
    """
    if split not in ("val", "test"):
        raise ValueError(f"--split must be 'val' or 'test', got '{split}'")
    sources = []
    path = resolve_mole(workdir, ckpt)
    sources.append(f"checkpoint: {path} ({'--ckpt' if ckpt else f'latest MoLE run in workspace {workdir}'})")
    ctx = DistContext(device=resolve_device(device))  # evaluation runs in one process
    loaded = load_checkpoint(path, device=str(ctx.device))
    space = loaded.supernet.space
    sn, sn_src = resolve_subnet(subnet, space)
    sources.append(f"subnet: {sn_src}")
    if loaded.mole is None and use_experts:
        use_experts = False
        sources.append("experts: none (a supernet checkpoint)")
    run_data = resolve_run_data(space, RecordedData.of_checkpoint(loaded), data,
                                reuse_split="same_name" if split == "val" else "never")
    dc, saved = run_data.config, run_data.split
    sources.append(f"data: {_describe_data(dc)} ({run_data.data_source})")
    if split == "val":
        if saved is not None:
            sources.append(f"split: held-out val from {run_data.split_path}")
        else:
            sources.append(f"split: new held-out val split ({val_size} images, seed {seed}); the run has none for this data")
    else:
        sources.append("split: test set")
    bundle = D.build_data(dc, val_size, seed, None, val_subset if split == "val" else None, saved)
    _check_classes(bundle, space)
    loaders = D.make_loaders(bundle, dc, batch_size, ctx.rank, ctx.world_size, seed, num_workers=2)
    loader = loaders.val if split == "val" else loaders.test
    use_amp = (ctx.device.type == "cuda") if amp is None else amp
    with autocast(ctx, use_amp):
        res = evaluate(loaded.supernet, sn, loader, mole=loaded.mole, use_experts=use_experts, device=ctx.device)
    return EvalReport(res, path, loaded.kind, sn, use_experts, split, sources)
