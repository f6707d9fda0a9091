"""The held-out validation split: carved from the training set with a seed, saved as JSON with the run and
reproduced exactly from that record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

import torch

from taslora_core.artifact_read import read_json_artifact
from taslora_core.atomic import atomic_write_text

__all__ = ["effective_val_size", "seeded_perm", "make_split", "split_indices", "save_split", "load_split",
           "resolve_split", "subset_val"]

_SPLIT_VERSION = 1


def effective_val_size(num_total: int, val_size: int) -> int:
    """Requested validation size capped at 20% of the training set."""
    if val_size < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size}")
    return min(int(val_size), int(num_total * 0.2))


def seeded_perm(n: int, seed: int) -> torch.Tensor:
    """The permutation of range(n) drawn from a generator seeded with `seed` (the same on every machine)."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return torch.randperm(n, generator=gen)


def make_split(num_total: int, val_size: int = 10000, seed: int = 0, train_subset: int | None = None,
               data: str = "") -> dict[str, Any]:
    """Carve a held-out validation set from ``num_total`` training images.

    A seeded ``torch.randperm`` puts the first ``effective_val_size`` indices in validation; the rest,
    in permutation order, are the training indices, of which only the first ``train_subset`` are used.
    Returns a JSON-able dict: version, data, seed, num_total, val_indices, train_count.
    """
    if num_total <= 0:
        raise ValueError("cannot split an empty training set")
    n_val = effective_val_size(num_total, val_size)
    perm = seeded_perm(num_total, seed)
    n_train = num_total - n_val
    if train_subset is not None:
        if train_subset <= 0:
            raise ValueError(f"train_subset must be positive, got {train_subset}")
        n_train = min(n_train, int(train_subset))
    return {
        "version": _SPLIT_VERSION, "data": str(data), "seed": int(seed), "num_total": int(num_total),
        "val_indices": perm[:n_val].tolist(), "train_count": int(n_train),
    }


def _check_split(split: dict[str, Any]) -> None:
    missing = {"seed", "num_total", "val_indices", "train_count"} - set(split)
    if missing:
        raise ValueError(f"split record lacks {sorted(missing)}")
    n = int(split["num_total"])
    val = split["val_indices"]
    if val and (min(val) < 0 or max(val) >= n or len(set(val)) != len(val)):
        raise ValueError(f"split val_indices must be distinct and within 0..{n - 1}")
    if not 0 <= int(split["train_count"]) <= n - len(val):
        raise ValueError(f"split train_count {split['train_count']} exceeds the {n - len(val)} non-val images")


def split_indices(split: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_indices, val_indices)`` of a split record, reproduced exactly from its seed."""
    _check_split(split)
    n = int(split["num_total"])
    val = torch.tensor(split["val_indices"], dtype=torch.int64)
    perm = seeded_perm(n, int(split["seed"]))
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    train = perm[~is_val[perm]][: int(split["train_count"])]
    return train, val


def save_split(path: Union[str, Path], split: dict[str, Any]) -> None:
    """Write a split record as compact JSON, atomically (`taslora_core.atomic`)."""
    _check_split(split)
    atomic_write_text(path, json.dumps(split))


def load_split(path: Union[str, Path]) -> dict[str, Any]:
    """Read a split record written by :func:`save_split` (validated; a damaged file is a one-line error)."""
    fix = "restore it from a copy of the run folder, or retrain to carve a new split"
    split = read_json_artifact(path, "held-out split", fix)
    try:
        _check_split(split)
    except (ValueError, TypeError) as err:
        raise ValueError(f"held-out split {path} is not a valid split record ({err}); {fix}") from None
    return split


def resolve_split(num_total: int, data: str, val_size: int, seed: int, train_subset: int | None,
                  split: dict[str, Any] | None) -> dict[str, Any]:
    """A new split (`split` None) or a copy of the saved one, checked against `num_total` and cut to `train_subset`."""
    if split is None:
        return make_split(num_total, val_size, seed, train_subset, data=data)
    if int(split["num_total"]) != num_total:
        raise ValueError(
            f"saved split was made for {split['num_total']} training images but {data} has {num_total}"
        )
    split = dict(split)
    if train_subset is not None:
        split["train_count"] = min(int(split["train_count"]), int(train_subset))
    return split


def subset_val(val_idx: torch.Tensor, val_subset: int | None) -> torch.Tensor:
    """The first `val_subset` validation indices (all with None)."""
    if val_subset is None:
        return val_idx
    if val_subset <= 0:
        raise ValueError(f"val_subset must be positive, got {val_subset}")
    return val_idx[:val_subset]
