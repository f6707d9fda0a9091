"""`evaluate_run`: top-1/loss of one subnet of a trained run, with or without its experts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taslora_core import data as D
from taslora_core.distributed import DistContext, resolve_device
from taslora_core.evaluate import EvalResult, evaluate
from taslora_core.run_data import RecordedData, describe_data, resolve_run_data
from taslora_core.run_io import load_checkpoint, resolve_mole
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, smallest_subnet
from taslora_core.train.loop import autocast
from taslora_core.train.run_setup import check_classes
from taslora_core.workspace import DEFAULT_WORKDIR


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
    workdir: str | Path = DEFAULT_WORKDIR,
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
    sources.append(f"data: {describe_data(dc)} ({run_data.data_source})")
    if split == "val":
        if saved is not None:
            sources.append(f"split: held-out val from {run_data.split_path}")
        else:
            sources.append(f"split: new held-out val split ({val_size} images, seed {seed}); the run has none for this data")
    else:
        sources.append("split: test set")
    bundle = D.build_data(dc, val_size, seed, None, val_subset if split == "val" else None, saved)
    check_classes(bundle, space)
    loaders = D.make_loaders(bundle, dc, batch_size, ctx.rank, ctx.world_size, seed, num_workers=2)
    loader = loaders.val if split == "val" else loaders.test
    use_amp = (ctx.device.type == "cuda") if amp is None else amp
    with autocast(ctx, use_amp):
        res = evaluate(loaded.supernet, sn, loader, mole=loaded.mole, use_experts=use_experts, device=ctx.device)
    return EvalReport(res, path, loaded.kind, sn, use_experts, split, sources)
