"""Search spaces: the supernet's allocated dims plus the architecture choices that are sampled.

A `SearchSpace` describes both the *supernet* (the sizes of the weight tensors it allocates) and the
*search space* (the embed dims, depths, head counts and MLP ratios a subnet may pick). Presets reproduce
AutoFormer's T/S/B spaces exactly; `fmnist` is the small embedded default that trains on a CPU.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class SpaceError(ValueError):
    """A search space definition is invalid or cannot be read."""


@dataclass(frozen=True)
class ArchGroup:
    """One architecture group: a (heads, MLP ratio, embed dim[, depth]) combination; one expert each."""

    num_heads: int
    mlp_ratio: float
    embed_dim: int
    depth: int | None = None


@dataclass(frozen=True)
class SearchSpace:
    """A weight-entangled ViT supernet and the architecture choices sampled from it."""

    name: str
    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    head_dim: int
    max_relative_position: int
    super_embed_dim: int
    super_depth: int
    super_num_heads: int
    super_mlp_ratio: float
    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    relative_position: bool = True
    abs_pos: bool = True
    global_pool: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("embed_dims", "depths", "num_heads", "mlp_ratios"):
            value = tuple(sorted(getattr(self, name)))
            if not value:
                raise SpaceError(f"search space '{self.name}': {name} is empty; list at least one choice")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "mlp_ratios", tuple(float(r) for r in self.mlp_ratios))
        object.__setattr__(self, "super_mlp_ratio", float(self.super_mlp_ratio))
        if self.img_size % self.patch_size:
            raise SpaceError(
                f"search space '{self.name}': img_size {self.img_size} is not a multiple of patch_size "
                f"{self.patch_size}; pick sizes that tile the image"
            )
        if self.super_num_heads * self.head_dim > self.super_embed_dim * 1:
            # qkv is allocated as (3*E_super, E_super): q/k/v widths heads*head_dim must fit E_super.
            raise SpaceError(
                f"search space '{self.name}': super_num_heads*head_dim = {self.super_num_heads * self.head_dim} "
                f"exceeds super_embed_dim {self.super_embed_dim}; raise super_embed_dim or lower head_dim"
            )
        if max(self.embed_dims) > self.super_embed_dim or max(self.depths) > self.super_depth:
            raise SpaceError(
                f"search space '{self.name}': the choices exceed the supernet (embed {max(self.embed_dims)} > "
                f"{self.super_embed_dim} or depth {max(self.depths)} > {self.super_depth}); enlarge SUPERNET"
            )
        if max(self.num_heads) > self.super_num_heads or max(self.mlp_ratios) > self.super_mlp_ratio:
            raise SpaceError(
                f"search space '{self.name}': head or MLP-ratio choices exceed the supernet's allocation; "
                "enlarge SUPERNET.NUM_HEADS / MLP_RATIO"
            )

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_patches(self) -> int:
        """Number of patch tokens (the grid is square)."""
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Patch tokens plus the cls token."""
        return self.num_patches + 1

    @property
    def super_hidden_dim(self) -> int:
        """Rows allocated for fc1 (AutoFormer: int(mlp_ratio * E_super))."""
        return int(self.super_mlp_ratio * self.super_embed_dim)

    @property
    def rel_table_rows(self) -> int:
        """Rows of each relative-position table: 2*max_relative_position + 2."""
        return 2 * self.max_relative_position + 2

    @property
    def rel_table_cols(self) -> int:
        """Columns of each relative-position table: E_super // heads_super (AutoFormer)."""
        return self.super_embed_dim // self.super_num_heads

    # ------------------------------------------------------------------ groups
    def groups(self, include_depth: bool = False) -> list[ArchGroup]:
        """Architecture groups in a fixed order; group g owns expert g (12 / 27 / 18 for T / S / B)."""
        depths: tuple[int | None, ...] = self.depths if include_depth else (None,)
        return [
            ArchGroup(num_heads=h, mlp_ratio=r, embed_dim=e, depth=d)
            for d, e, h, r in itertools.product(depths, self.embed_dims, self.num_heads, self.mlp_ratios)
        ]

    def group_index(self, num_heads: int, mlp_ratio: float, embed_dim: int, depth: int | None = None) -> int:
        """Index of the group a block belongs to; raises SpaceError when outside the search space."""
        key = ArchGroup(num_heads, float(mlp_ratio), embed_dim, depth)
        try:
            return self.groups(include_depth=depth is not None).index(key)
        except ValueError:
            raise SpaceError(
                f"block (heads={num_heads}, mlp_ratio={mlp_ratio}, embed={embed_dim}) is not in search space "
                f"'{self.name}'; routing needs a subnet from the search space"
            ) from None

    # ------------------------------------------------------------------ I/O
    @staticmethod
    def preset(name: str) -> "SearchSpace":
        """One of the built-in spaces: autoformer-t, autoformer-s, autoformer-b, fmnist, fmnist-wide."""
        key = name.lower()
        if key not in PRESETS:
            raise SpaceError(f"unknown search space '{name}'; choose one of {', '.join(PRESETS)} or pass a YAML file")
        return PRESETS[key]

    @staticmethod
    def resolve(name_or_path: str | Path) -> "SearchSpace":
        """A preset name or a path to a YAML/JSON file (ours or AutoFormer's)."""
        text = str(name_or_path)
        if text.lower() in PRESETS:
            return SearchSpace.preset(text)
        path = Path(text)
        if not path.exists():
            raise SpaceError(
                f"'{text}' is neither a preset ({', '.join(PRESETS)}) nor an existing YAML file; check the name"
            )
        if path.suffix == ".json":
            return SearchSpace.from_dict(json.loads(path.read_text()))
        return SearchSpace.from_yaml(path)

    @staticmethod
    def from_yaml(path: str | Path) -> "SearchSpace":
        """Read our own YAML format or AutoFormer's supernet/subnet YAML (SUPERNET and SEARCH_SPACE keys)."""
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise SpaceError(f"cannot read search space YAML {path}: {err}") from None
        if not isinstance(doc, dict):
            raise SpaceError(f"{path}: expected a mapping at the top level")
        if "SUPERNET" in doc or "SEARCH_SPACE" in doc:
            return _from_autoformer_yaml(doc, path)
        return SearchSpace.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (our own format)."""
        out = asdict(self)
        for key in ("embed_dims", "depths", "num_heads", "mlp_ratios"):
            out[key] = list(out[key])
        return out

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> "SearchSpace":
        """Inverse of `to_dict`; unknown keys raise a SpaceError naming them."""
        known = {f.name for f in fields(SearchSpace)}
        unknown = sorted(set(doc) - known - {"format"})
        if unknown:
            raise SpaceError(f"unknown search space keys {unknown}; known keys are {sorted(known)}")
        missing = sorted(f.name for f in fields(SearchSpace) if f.name not in doc and f.name not in _OPTIONAL)
        if missing:
            raise SpaceError(f"search space is missing keys {missing}")
        values = {k: v for k, v in doc.items() if k in known}
        for key in ("embed_dims", "depths", "num_heads", "mlp_ratios"):
            values[key] = tuple(values[key])
        return SearchSpace(**values)

    def to_yaml(self, path: str | Path) -> None:
        """Write our own YAML format."""
        Path(path).write_text(yaml.safe_dump({"format": "taslora-space", **self.to_dict()}, sort_keys=False))


_OPTIONAL = {"relative_position", "abs_pos", "global_pool", "extra"}


def _from_autoformer_yaml(doc: dict[str, Any], path: Path) -> SearchSpace:
    try:
        sup = doc["SUPERNET"]
        ss = doc["SEARCH_SPACE"]
        super_embed = int(sup["EMBED_DIM"])
        super_heads = int(sup["NUM_HEADS"])
        return SearchSpace(
            name=path.stem,
            img_size=224,
            patch_size=16,
            in_chans=3,
            num_classes=1000,
            head_dim=64,
            max_relative_position=14,
            super_embed_dim=super_embed,
            super_depth=int(sup["DEPTH"]),
            super_num_heads=super_heads,
            super_mlp_ratio=float(sup["MLP_RATIO"]),
            embed_dims=tuple(int(v) for v in ss["EMBED_DIM"]),
            depths=tuple(int(v) for v in ss["DEPTH"]),
            num_heads=tuple(int(v) for v in ss["NUM_HEADS"]),
            mlp_ratios=tuple(float(v) for v in ss["MLP_RATIO"]),
        )
    except KeyError as err:
        raise SpaceError(f"{path}: AutoFormer YAML lacks key {err}; it needs SUPERNET and SEARCH_SPACE blocks") from None


def _autoformer(name: str, embed: int, depth: int, heads: int, embeds, depths, head_choices, ratios) -> SearchSpace:
    return SearchSpace(
        name=name, img_size=224, patch_size=16, in_chans=3, num_classes=1000, head_dim=64,
        max_relative_position=14, super_embed_dim=embed, super_depth=depth, super_num_heads=heads,
        super_mlp_ratio=4.0, embed_dims=embeds, depths=depths, num_heads=head_choices, mlp_ratios=ratios,
    )


PRESETS: dict[str, SearchSpace] = {
    "autoformer-t": _autoformer("autoformer-t", 256, 14, 4, (192, 216, 240), (12, 13, 14), (3, 4), (3.5, 4.0)),
    "autoformer-s": _autoformer("autoformer-s", 448, 14, 7, (320, 384, 448), (12, 13, 14), (5, 6, 7), (3.0, 3.5, 4.0)),
    "autoformer-b": _autoformer("autoformer-b", 640, 16, 10, (528, 576, 624), (14, 15, 16), (9, 10), (3.0, 3.5, 4.0)),
    # Embedded default: 28x28x1 Fashion-MNIST, patch 7 (a 4x4 grid: 16 patches + cls), 3 x 2 x 2 = 12 groups.
    # Patch 7 rather than 4 trains ~3.5x faster on 2 CPU cores (17 tokens instead of 50).
    "fmnist": SearchSpace(
        name="fmnist", img_size=28, patch_size=7, in_chans=1, num_classes=10, head_dim=32,
        max_relative_position=3, super_embed_dim=96, super_depth=6, super_num_heads=3, super_mlp_ratio=3.0,
        embed_dims=(64, 80, 96), depths=(4, 5, 6), num_heads=(2, 3), mlp_ratios=(2.0, 3.0),
    ),
    # fmnist widened downwards, largest subnet unchanged (so an epoch costs no more): 3 x 3 x 3 = 27 groups, like
    # AutoFormer-S. The smallest subnet (embed 32, depth 2, 1 head, MLP 1) has ~1/40 of the largest's FLOPs, so
    # small and large subnets pull the shared weights apart: the regime where weight sharing costs accuracy.
    "fmnist-wide": SearchSpace(
        name="fmnist-wide", img_size=28, patch_size=7, in_chans=1, num_classes=10, head_dim=32,
        max_relative_position=3, super_embed_dim=96, super_depth=6, super_num_heads=3, super_mlp_ratio=3.0,
        embed_dims=(32, 64, 96), depths=(2, 3, 4, 5, 6), num_heads=(1, 2, 3), mlp_ratios=(1.0, 2.0, 3.0),
    ),
}
