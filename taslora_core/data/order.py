"""The per-rank sample order: one seeded permutation per epoch shared by all ranks, padded and strided by
rank, resumable from an (epoch, position) pair."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from taslora_core.data.split import seeded_perm

__all__ = ["shard_indices", "ShardedOrder"]

def shard_indices(length: int, epoch: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                  start: int = 0, shuffle: bool = True, pad: bool = True) -> torch.Tensor:
    """This rank's indices for one epoch, from sample ``start`` of its shard on.

    With ``shuffle`` every rank draws the same permutation from ``seed + epoch``; with ``pad`` it is
    extended (wrapping around) to a multiple of ``world_size`` so all ranks get equal lengths. Rank
    ``r`` takes positions ``r, r + world_size, ...``. To resume after ``k`` batches use
    ``start = k * batch_size``.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    order = seeded_perm(length, seed + epoch) if shuffle else torch.arange(length)
    if pad:
        total = math.ceil(length / world_size) * world_size
        if total > length:
            order = order.repeat(math.ceil(total / length))[:total]
    return order[rank::world_size][start:]


class ShardedOrder(Sampler[int]):
    """Stateful per-rank order (a Sampler): :func:`shard_indices` for the current epoch and position.

    ``position`` counts samples of this rank's shard already consumed; the owning loader advances it
    with :meth:`advance`. Iterating snapshots the remaining indices of the current epoch.
    """

    def __init__(self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, pad: bool = True) -> None:
        shard_indices(length, 0, seed, rank, world_size, shuffle=False, pad=pad)  # validates arguments
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.shuffle, self.pad = shuffle, pad
        self.epoch = 0
        self.position = 0

    @property
    def num_samples(self) -> int:
        """Samples in this rank's shard per epoch."""
        if self.pad:
            return math.ceil(self.length / self.world_size)
        return len(range(self.rank, self.length, self.world_size))

    def indices(self) -> torch.Tensor:
        """Remaining indices of the current epoch for this rank."""
        return shard_indices(self.length, self.epoch, self.seed, self.rank, self.world_size,
                             start=self.position, shuffle=self.shuffle, pad=self.pad)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples - self.position

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` (position 0); a no-op when already there, which keeps a resumed position."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def advance(self, n: int) -> None:
        """Mark ``n`` more samples of the current epoch as consumed."""
        self.position = min(self.position + int(n), self.num_samples)

    def next_epoch(self) -> None:
        """Move to the start of the following epoch."""
        self.epoch, self.position = self.epoch + 1, 0

    def rewind(self) -> None:
        """Back to the start of the current epoch."""
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "length", "world_size", "seed"}``."""
        return {"epoch": self.epoch, "position": self.position, "length": self.length,
                "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore epoch and position; length and world size must match the saved ones."""
        for key in ("length", "world_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"cannot resume: saved {key}={state[key]} but now {getattr(self, key)}")
        self.epoch = int(state["epoch"])
        self.position = min(int(state["position"]), self.num_samples)
