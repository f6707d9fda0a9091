"""What a training run's summary.json holds: the subnets it reports, their validation numbers, the throughput."""

from __future__ import annotations

from typing import Any

from taslora_core import data as D
from taslora_core.evaluate import EvalResult
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, sample_distinct, smallest_subnet
from taslora_core.train.config import TrainConfig
from taslora_core.train.loop import LoopResult
from taslora_core.train.tasks import ModelTask


def summary_subnets(space: SearchSpace, seed: int, count: int) -> list[tuple[str, Subnet]]:
    """Largest, smallest and `count` distinct random subnets (fixed by `seed`): what summary.json reports."""
    out = [("largest", largest_subnet(space)), ("smallest", smallest_subnet(space))]
    drawn = sample_distinct(space, count, f"summary:{seed}", taken={sn.key() for _, sn in out}, max_tries=1000)
    return out + [(f"random_{i}", sn) for i, sn in enumerate(drawn)]


def eval_subnets(space: SearchSpace) -> list[tuple[str, Subnet]]:
    """The subnets evaluated at every epoch end: the largest and the smallest."""
    return [("largest", largest_subnet(space)), ("smallest", smallest_subnet(space))]


def summary_entry(res: EvalResult) -> dict[str, float]:
    """Loss and top-1 of one evaluation."""
    return {"loss": res.loss, "top1": res.top1}


def common_summary(cfg: TrainConfig, result: LoopResult, bundle: D.DataBundle) -> dict[str, Any]:
    """The summary fields every training run writes: steps, images, losses, throughput, epoch history."""
    return {
        "epochs": cfg.epochs, "global_steps": result.global_step, "batch_size": cfg.batch_size,
        "train_images": len(bundle.train), "final_train_loss": result.last_loss,
        "train_images_per_s": result.images_per_s, "train_seconds": result.train_seconds,
        "forward_passes": result.forward_passes, "backward_passes": result.backward_passes,
        # wall clock of the epochs (data, logging and checkpoints included; evaluation excluded)
        "epoch_images_per_s": (sum(r["images_per_s"] * r["epoch_seconds"] for r in result.epochs)
                               / max(sum(r["epoch_seconds"] for r in result.epochs), 1e-9)),
        "epoch_history": [{k: r[k] for k in ("epoch", "train_loss", "val")} for r in result.epochs],
    }


def compare(task: ModelTask, base_task: ModelTask | None, space: SearchSpace, cfg: TrainConfig, new: str,
            old: str) -> dict[str, Any]:
    """Val loss/top-1 of the summary subnets for the trained model (`new`) and its starting point (`old`): the
    `base_task` model, or `task` without its experts when there is none."""
    out: dict[str, Any] = {}
    for name, sn in summary_subnets(space, cfg.seed, cfg.summary_subnets):
        res_new = task.evaluate(sn, use_experts=True)
        res_old = base_task.evaluate(sn) if base_task is not None else task.evaluate(sn, use_experts=False)
        out[name] = {new: summary_entry(res_new), old: summary_entry(res_old), "subnet": sn.to_dict(),
                     "count": res_new.count}
    return out


def mean_improvement(val: dict[str, Any]) -> dict[str, float]:
    """Mean over the summary subnets of (old loss - new loss) and (new top-1 - old top-1)."""
    loss, top1 = [], []
    for entry in val.values():
        new, old = [entry[k] for k in entry if isinstance(entry[k], dict) and "loss" in entry[k]]
        loss.append(old["loss"] - new["loss"])
        top1.append(new["top1"] - old["top1"])
    n = max(len(loss), 1)
    return {"loss": sum(loss) / n, "top1": sum(top1) / n}
