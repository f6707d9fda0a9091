"""The settings of `taslora specialize`: the single source of its defaults and help (the CLI options are derived
from these fields by `taslora_cli.config_options`, like the training commands').

A run records its config in train_config.json (`to_dict`); a resumed run reads it back (`from_dict`) and takes
only the runtime fields (`RUNTIME_FIELDS`) from the new call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taslora_core.train.config import RUNTIME_FIELDS, setting
from taslora_core.workspace import DEFAULT_WORKDIR

__all__ = ["DEFAULT_STEPS", "METRICS", "RUNTIME_FIELDS", "SpecializeConfig", "WEIGHT_MODES"]

WEIGHT_MODES = ("lora", "linear", "single-lora")
"""What a specialize run trains (see `SpecializeConfig.weights`)."""

METRICS = ("loss", "top1")
"""What the kept state minimises on validation: cross-entropy, or top-1 error (ties broken by the loss)."""

DEFAULT_STEPS = 1000
"""The budget when neither --steps nor --epochs is given: about the headroom fine-tune's (12 epochs of 10,000
images at batch 128 = 936 steps, benchmarks/results/headroom/map.json)."""


@dataclass
class SpecializeConfig:
    """`taslora specialize`: fine-tune one subnet alone, from its routed mixture of experts (or from the supernet)."""

    workdir: str = str(DEFAULT_WORKDIR)  # the CLI's shared --workdir option
    seed: int = 0  # the CLI's shared --seed option
    subnet: str | None = setting(
        None, "The subnet: a JSON file (best.json, a subnet JSON or AutoFormer YAML) or inline JSON "
        "(default: best.json of the latest search).")
    pareto: str | None = setting(
        None, "A pareto.json (`taslora search --pareto`); specialise its member --member.", cli_type=Path | None)
    member: int | None = setting(None, "With --pareto: the member's index in the front (0 = cheapest).")
    ckpt: str | None = setting(
        None, "MoLE run folder (default: the checkpoint the search recorded, else the latest MoLE run).",
        cli_type=Path | None)
    supernet: str | None = setting(
        None, "Start from this supernet run alone (no experts: the LoRA starts from zero).", cli_type=Path | None)
    weights: str = setting(
        "linear", "What is trained: linear (the default: the full sliced qkv/proj/fc1/fc2 weights, from sliced "
        "supernet + routed mixture; on wide-10k it took 92% of the headroom where lora took 53%, docs/results.md), "
        "lora (the experts' U/D factors at the subnet's fixed routing, router frozen) or single-lora (one fresh "
        "rank-r LoRA on top of the frozen routed mixture). Every mode folds exactly into the exported weights.")
    steps: int | None = setting(None, f"Optimisation steps (default {DEFAULT_STEPS} when --epochs is not given).")
    epochs: int | None = setting(None, "Budget in epochs of the training split instead of --steps.")
    batch_size: int = setting(128, "Images per step.")
    lr: float = setting(5e-4, "Peak AdamW learning rate (cosine to --min-lr).")
    min_lr: float = setting(5e-6, "Learning rate at the end of the cosine.")
    warmup_steps: int = setting(0, "Linear warm-up steps from --min-lr.")
    weight_decay: float = setting(0.05, "AdamW weight decay.")
    eval_every: int = setting(50, "Evaluate on the held-out validation images every N steps (and checkpoint).")
    val_subset: int | None = setting(2000, "Held-out validation images of the evaluations (the first N of the run's split).")
    metric: str = setting(
        "loss", "What the kept state and early stopping go by on the validation images: loss (cross-entropy) or top1.")
    patience: int | None = setting(
        6, "Stop after N evaluations without a better validation --metric, 0: never (the best state is kept either way).")
    patience_after: float = setting(
        0.5, "Only evaluations after this share of the budget count towards --patience: fine-tuning first raises the "
        "validation loss of some subnets (on wide-10k, --weights linear, the searched subnet's stayed above its "
        "step-0 value for the first 300 steps). The best state is kept either way.")
    rank: int | None = setting(
        None, "Rank of the fresh LoRA (single-lora, or lora from a supernet alone; default: the experts' rank, else 8).")
    lora_alpha: float | None = setting(
        None, "Scale numerator of the fresh LoRA: it adds (alpha / rank) U D (default: the experts' alpha, else 16).")
    drop_path: float = setting(0.0, "Max stochastic-depth rate while specialising.")
    train_subset: int | None = setting(
        None, "Train on the first N images of the run's training split only (default: all the split holds).")
    data: str | None = setting(
        None, "Data (default: what the run recorded); needed for an imported AutoFormer supernet.")
    clip_grad: float | None = setting(None, "Clip the gradient norm to this value (default: no clipping).")
    eval_batch_size: int = setting(512, "Batch size of evaluation.")
    device: str = setting("auto", "auto (CUDA if available), cpu, cuda or cuda:N.")
    threads: int | None = setting(None, "torch CPU threads (default: torch's choice).")
    num_workers: int = setting(2, "Data-loader workers for folder data.", flag="--workers")
    name: str | None = setting(None, "Suffix of the run folder name.")
    quiet: bool = setting(False, "Only the start and end lines (the log file gets every line).", flag="--quiet")

    def budget_steps(self, steps_per_epoch: int) -> int:
        """Optimisation steps of the run: --steps, --epochs x steps per epoch, or `DEFAULT_STEPS`."""
        if self.steps is not None:
            return int(self.steps)
        if self.epochs is not None:
            return int(self.epochs) * int(steps_per_epoch)
        return DEFAULT_STEPS

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "SpecializeConfig":
        """Inverse of `to_dict` (unknown keys, e.g. options of other versions, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def with_runtime(self, now: "SpecializeConfig") -> "SpecializeConfig":
        """This (resumed) config with the runtime options of the call `now` (`RUNTIME_FIELDS`)."""
        return dataclasses.replace(self, **{k: getattr(now, k) for k in RUNTIME_FIELDS if hasattr(now, k)})

    def check(self) -> None:
        """Reject settings no run can use: one-line ValueErrors naming the option."""
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"--weights must be one of {', '.join(WEIGHT_MODES)}, not '{self.weights}'")
        if self.metric not in METRICS:
            raise ValueError(f"--metric must be one of {', '.join(METRICS)}, not '{self.metric}'")
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"--steps {self.steps} and --epochs {self.epochs} exclude each other; give one budget")
        for name in ("steps", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1 (the budget), got {value}")
        positive = {"batch-size": self.batch_size, "eval-every": self.eval_every, "eval-batch-size": self.eval_batch_size,
                    "val-subset": self.val_subset, "rank": self.rank,
                    "train-subset": self.train_subset}
        for name, value in positive.items():
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        if not 0.0 <= self.patience_after <= 1.0:
            raise ValueError(f"--patience-after must be a share of the budget in [0, 1], got {self.patience_after}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"--patience must be >= 0 (0: no early stopping), got {self.patience}")
        if not self.lr > 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"--lr must be > 0 and --min-lr in [0, --lr], got {self.lr:g} and {self.min_lr:g}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay:g}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"--lora-alpha must be > 0, got {self.lora_alpha:g}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"--drop-path must be in [0, 1), got {self.drop_path:g}")
        if self.pareto is None and self.member is not None:
            raise ValueError(f"--member {self.member} goes with --pareto PARETO_JSON")
        if self.pareto is not None and self.member is None:
            raise ValueError(f"--pareto {self.pareto} needs --member I (the index of the member to specialise)")
        if self.pareto is not None and self.subnet is not None:
            raise ValueError("--subnet and --pareto exclude each other; pass one of them")
        if self.supernet is not None and self.ckpt is not None:
            raise ValueError(f"--ckpt {self.ckpt} and --supernet {self.supernet} exclude each other: --supernet starts "
                             "from the supernet alone, --ckpt from a MoLE run's routed mixture")
