"""Subnets: one architecture inside a supernet (embed dim, depth, per-block heads and MLP ratio)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from taslora_core.space import SearchSpace


class SubnetError(ValueError):
    """Base class of subnet validation errors."""


class SubnetDoesNotFitSupernet(SubnetError):
    """The subnet needs more rows/columns than the supernet allocates."""


class SubnetOutsideSearchSpace(SubnetError):
    """The subnet fits the supernet but uses choices the search space does not list."""


def _mlp_ratios(lower: dict[str, Any], depth: int) -> list[float]:
    """The per-block MLP ratios of a lower-cased subnet description: `mlp_ratios` (ours) or `mlp_ratio` (AutoFormer's
    YAML and older taslora files; one number means the same ratio in every block)."""

    def as_list(value: Any) -> list[float]:
        return [float(value)] * depth if isinstance(value, (int, float)) else [float(v) for v in value]

    ours, theirs = lower.get("mlp_ratios"), lower.get("mlp_ratio")
    if ours is None and theirs is None:
        raise SubnetError("subnet description lacks 'mlp_ratios'; expected keys embed_dim, depth, mlp_ratios, num_heads")
    if ours is not None and theirs is not None and as_list(ours) != as_list(theirs):
        raise SubnetError(f"subnet description has both mlp_ratios {ours} and mlp_ratio {theirs}, and they differ; keep one")
    return as_list(ours if ours is not None else theirs)


@dataclass(frozen=True)
class Subnet:
    """A subnet: one embed dim for all blocks, `depth` blocks each with its own heads and MLP ratio."""

    embed_dim: int
    depth: int
    mlp_ratios: tuple[float, ...]
    num_heads: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mlp_ratios", tuple(float(r) for r in self.mlp_ratios))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        if len(self.mlp_ratios) != self.depth or len(self.num_heads) != self.depth:
            raise SubnetError(
                f"subnet depth {self.depth} but {len(self.mlp_ratios)} MLP ratios and {len(self.num_heads)} "
                "head counts; give one of each per block"
            )
        if self.depth < 1 or self.embed_dim < 1 or min(self.num_heads) < 1 or min(self.mlp_ratios) <= 0:
            raise SubnetError(f"subnet dims must be positive: {self.to_dict()}")

    # ------------------------------------------------------------------ derived
    def hidden_dim(self, block: int) -> int:
        """fc1 width of a block, AutoFormer's int(E * ratio)."""
        return int(self.embed_dim * self.mlp_ratios[block])

    def key(self) -> tuple:
        """A hashable key (AutoFormer's candidate tuple order: depth, ratios, heads, embed)."""
        return (self.depth, *self.mlp_ratios, *self.num_heads, self.embed_dim)

    # ------------------------------------------------------------------ validation
    def check_fits(self, space: SearchSpace) -> "Subnet":
        """Raise SubnetDoesNotFitSupernet when a dim exceeds the supernet's allocated weights."""
        problems = []
        if self.embed_dim > space.super_embed_dim:
            problems.append(f"embed_dim {self.embed_dim} > supernet {space.super_embed_dim}")
        if self.depth > space.super_depth:
            problems.append(f"depth {self.depth} > supernet {space.super_depth}")
        for b in range(self.depth):
            if self.num_heads[b] * space.head_dim > space.super_embed_dim:
                problems.append(f"block {b}: {self.num_heads[b]} heads x {space.head_dim} > {space.super_embed_dim}")
            if self.hidden_dim(b) > space.super_hidden_dim:
                problems.append(f"block {b}: MLP width {self.hidden_dim(b)} > supernet {space.super_hidden_dim}")
        if problems:
            raise SubnetDoesNotFitSupernet(
                f"subnet does not fit supernet '{space.name}': {'; '.join(problems)}"
            )
        return self

    def check_in_space(self, space: SearchSpace) -> "Subnet":
        """Raise SubnetOutsideSearchSpace unless every choice is listed in the search space (implies fits)."""
        self.check_fits(space)
        problems = []
        if self.embed_dim not in space.embed_dims:
            problems.append(f"embed_dim {self.embed_dim} not in {list(space.embed_dims)}")
        if self.depth not in space.depths:
            problems.append(f"depth {self.depth} not in {list(space.depths)}")
        bad_r = sorted({r for r in self.mlp_ratios if r not in space.mlp_ratios})
        bad_h = sorted({h for h in self.num_heads if h not in space.num_heads})
        if bad_r:
            problems.append(f"MLP ratios {bad_r} not in {list(space.mlp_ratios)}")
        if bad_h:
            problems.append(f"head counts {bad_h} not in {list(space.num_heads)}")
        if problems:
            raise SubnetOutsideSearchSpace(
                f"subnet is outside search space '{space.name}' (it fits the supernet): {'; '.join(problems)}"
            )
        return self

    def in_space(self, space: SearchSpace) -> bool:
        """True when `check_in_space` would pass."""
        try:
            self.check_in_space(space)
        except SubnetError:
            return False
        return True

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: keys embed_dim, depth, mlp_ratios (one per block), num_heads.

        (Files written before this key was named `mlp_ratios` say `mlp_ratio`, AutoFormer's name for the list;
        `from_dict` reads both.)
        """
        return {
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "mlp_ratios": list(self.mlp_ratios),
            "num_heads": list(self.num_heads),
        }

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> "Subnet":
        """Read our JSON form; also accepts a dict wrapping it under 'subnet', AutoFormer's upper-case keys
        (RETRAIN: MLP_RATIO, NUM_HEADS, EMBED_DIM, DEPTH) and the `mlp_ratio` key of older taslora files."""
        if "subnet" in doc and isinstance(doc["subnet"], dict):
            doc = doc["subnet"]
        if "RETRAIN" in doc:
            doc = doc["RETRAIN"]
        lower = {str(k).lower(): v for k, v in doc.items()}
        try:
            embed = lower["embed_dim"]
            if isinstance(embed, (list, tuple)):
                if len(set(embed)) != 1:
                    raise SubnetError(f"per-block embed dims {embed} differ; taslora needs one embed dim")
                embed = embed[0]
            heads = lower["num_heads"]
            depth = int(lower.get("depth", lower.get("layer_num", len(heads))))
        except KeyError as err:
            raise SubnetError(
                f"subnet description lacks {err}; expected keys embed_dim, depth, mlp_ratios, num_heads"
            ) from None
        ratios = _mlp_ratios(lower, depth)
        return Subnet(embed_dim=int(embed), depth=depth, mlp_ratios=tuple(ratios), num_heads=tuple(heads))

    def to_json(self, path: str | Path) -> None:
        """Write the subnet as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @staticmethod
    def load(path: str | Path) -> "Subnet":
        """Read a subnet from our JSON or from an AutoFormer subnet YAML (its RETRAIN block)."""
        path = Path(path)
        if not path.exists():
            raise SubnetError(f"subnet file {path} does not exist; pass a JSON written by `taslora search`")
        try:
            text = path.read_text(encoding="utf-8")
            doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as err:  # JSONDecodeError, UnicodeDecodeError
            raise SubnetError(f"subnet file {path} is damaged or not a subnet description "
                              f"({' '.join(str(err).split())[:160]}); pass a JSON written by `taslora search`") from None
        if not isinstance(doc, dict):
            raise SubnetError(f"{path}: expected a mapping describing one subnet")
        return Subnet.from_dict(doc)


def sample_subnet(space: SearchSpace, rng: random.Random) -> Subnet:
    """Uniform sampling as AutoFormer: depth, then per-block MLP ratios, then per-block heads, then embed dim."""
    depth = rng.choice(space.depths)
    ratios = [rng.choice(space.mlp_ratios) for _ in range(depth)]
    heads = [rng.choice(space.num_heads) for _ in range(depth)]
    embed = rng.choice(space.embed_dims)
    return Subnet(embed_dim=embed, depth=depth, mlp_ratios=tuple(ratios), num_heads=tuple(heads))


def sample_distinct(
    space: SearchSpace,
    n: int,
    rng_or_seed: random.Random | int | str,
    taken: set[tuple] | None = None,
    accept: Callable[[Subnet], bool] | None = None,
    max_tries: int | None = None,
) -> list[Subnet]:
    """Up to `n` distinct uniformly drawn subnets whose keys are not in `taken` (updated in place) and that
    `accept` admits, in draw order; at most `max_tries` draws (default 100 * n), so fewer come back when the
    space or the accepted region is small. A seed makes its own `random.Random`; a generator is drawn from."""
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    taken = set() if taken is None else taken
    limit = 100 * n if max_tries is None else max_tries
    out: list[Subnet] = []
    tries = 0
    while len(out) < n and tries < limit:
        tries += 1
        subnet = sample_subnet(space, rng)
        if subnet.key() in taken or (accept is not None and not accept(subnet)):
            continue
        taken.add(subnet.key())
        out.append(subnet)
    return out


def largest_subnet(space: SearchSpace) -> Subnet:
    """The largest subnet of the search space."""
    d = max(space.depths)
    return Subnet(max(space.embed_dims), d, (max(space.mlp_ratios),) * d, (max(space.num_heads),) * d)


def smallest_subnet(space: SearchSpace) -> Subnet:
    """The smallest subnet of the search space."""
    d = min(space.depths)
    return Subnet(min(space.embed_dims), d, (min(space.mlp_ratios),) * d, (min(space.num_heads),) * d)


AUTOFORMER_SUBNETS: dict[str, Subnet] = {
    "autoformer-t": Subnet(
        192, 13,
        (3.5, 3.5, 3.0, 3.5, 3.0, 3.0, 4.0, 4.0, 3.5, 4.0, 3.5, 4.0, 3.5),
        (3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 3, 3),
    ),
    "autoformer-s": Subnet(
        384, 13,
        (3.0, 3.5, 3.0, 3.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.5, 4.0),
        (6, 6, 5, 7, 5, 5, 5, 6, 6, 7, 7, 6, 7),
    ),
    "autoformer-b": Subnet(
        576, 14,
        (3.5, 3.5, 4.0, 3.5, 4.0, 3.5, 3.5, 3.0, 4.0, 4.0, 3.0, 4.0, 3.0, 3.5),
        (9, 9, 9, 9, 9, 10, 9, 9, 10, 9, 10, 9, 9, 10),
    ),
}
"""The official searched subnets of AutoFormer's subnet YAMLs (RETRAIN blocks)."""
