"""Which data and held-out split a run uses: the one resolver behind training, `eval` and `search`.

A run folder records the `DataConfig` it trained with (`data` in space.json / mole.json) and the file of its
held-out split (`split`, normally split.json). Given that record and the user's `--data` (plus recipe
options when training), :func:`resolve_run_data` returns the `DataConfig`, the split to reuse (or None: carve
a new one with the seed) and where both came from. The callers differ on purpose in three ways, each an
explicit parameter:

* `data_override`: "preset" (training, `eval`): `--data` gets its own preset (Fashion-MNIST's or AutoFormer's
  recipe), checked and sized for the search space; "keep_recipe" (`search`): `--data` replaces only the path
  of the recorded recipe.
* `fit_space`: force the model's `img_size` / `in_chans` onto the config (`search`).
* `reuse_split`: when a recorded split is reused: "always" (`search`), "same_source" (MoLE training on a
  supernet's split: Fashion-MNIST under any alias, or the same folder) or "same_name" (`eval`: the recorded
  `data` string equals the one used now); "never" when the split is not wanted (`eval --split test`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from taslora_core import data as D

if TYPE_CHECKING:
    from taslora_core.run_io import LoadedCheckpoint
    from taslora_core.space import SearchSpace

__all__ = [
    "RECIPE_OPTIONS", "RunDataMissing", "RecordedData", "RunData", "describe_data", "recipe_overrides",
    "data_config_for", "resolve_run_data",
]

DataOverride = Literal["preset", "keep_recipe"]
SplitReuse = Literal["always", "same_source", "same_name", "never"]

RECIPE_OPTIONS = ("mixup", "cutmix", "smoothing", "re_prob", "auto_augment")
"""Training options that override the data preset's augmentation recipe (None keeps the preset's value)."""


class RunDataMissing(D.DataUnavailable, ValueError):
    """The run records no data and no `--data` was given (a ValueError too, as `evaluate_run` raised before)."""


@dataclass(frozen=True)
class RecordedData:
    """What a run folder recorded about its data."""

    data: dict[str, Any] | None  # the DataConfig.to_dict() it trained with
    split_path: Path | None  # its saved held-out split, when that file exists
    where: str  # how messages name the run, e.g. "the supernet run" or a path
    readable: bool = True  # False when the run's metadata file could not be read

    @classmethod
    def from_meta(cls, run_dir: Path, meta: Mapping[str, Any], where: str | None = None) -> RecordedData:
        """From a run's metadata dict (space.json / mole.json); a relative split name lives in `run_dir`."""
        name = meta.get("split")
        path = Path(run_dir) / name if name else None  # an absolute name stays absolute
        return cls(meta.get("data"), path if path is not None and path.exists() else None,
                   where or str(run_dir))

    @classmethod
    def read(cls, run_dir: Path, meta_file: str, where: str | None = None) -> RecordedData:
        """From `run_dir / meta_file`; an unreadable file records nothing."""
        try:
            meta = json.loads((Path(run_dir) / meta_file).read_text())
        except (OSError, json.JSONDecodeError):
            return cls(None, None, where or str(run_dir), readable=False)
        return cls.from_meta(run_dir, meta, where)

    @classmethod
    def of_checkpoint(cls, ckpt: LoadedCheckpoint) -> RecordedData:
        """What an opened checkpoint (`run_io.load_checkpoint`) recorded."""
        return cls(ckpt.data, ckpt.split_path, f"checkpoint {ckpt.path}")


@dataclass
class RunData:
    """The data config and split a run uses, and where they came from."""

    config: D.DataConfig
    split: dict[str, Any] | None  # a saved split to reuse; None: build_data carves one with the seed
    split_path: Path | None  # the file `split` was read from
    data_source: str  # "recorded with the checkpoint", "--data" or "--data (recipe recorded with the checkpoint)"
    split_source: str  # "reused from <run> (<path>)" or "new (<why none is reused>)"

    def describe(self) -> str:
        """One line: the data and the split, with where each came from."""
        return f"data: {describe_data(self.config)} ({self.data_source}); split {self.split_source}"


def describe_data(dc: D.DataConfig) -> str:
    """'Fashion-MNIST (IDX files in DIR)' or 'image folder PATH'."""
    if dc.is_fmnist:
        return f"Fashion-MNIST (IDX files in {D.fmnist_root()})"
    return f"image folder {dc.data}"


def recipe_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """DataConfig overrides from the recipe options (keys of RECIPE_OPTIONS) that are not None;
    auto_augment '', 'none' or 'off' switches RandAugment off."""
    out: dict[str, Any] = {}
    for key in RECIPE_OPTIONS:
        value = options.get(key)
        if value is None:
            continue
        if key == "auto_augment":
            out[key] = None if str(value).lower() in ("", "none", "off") else value
        else:
            out[key] = float(value)
    return out


def data_config_for(data: str, space: SearchSpace, recipe: Mapping[str, Any] | None = None) -> D.DataConfig:
    """The preset for `data` ('fmnist' or an ImageNet-style folder, made absolute) sized for `space`, with the
    recipe options applied; a folder must have train/ and the space must take RGB input."""
    overrides = recipe_overrides(recipe or {})
    if not D.DataConfig(data=data).is_fmnist:
        data = str(Path(data).expanduser().resolve())
        if not (Path(data) / "train").is_dir():
            raise D.DataUnavailable(
                f"{Path(data) / 'train'} not found; --data expects 'fmnist' or an ImageNet-style folder "
                "PATH/train/<class>/*.jpeg and PATH/val/<class>/*.jpeg"
            )
        if space.in_chans != 3:
            raise ValueError(
                f"folder data is read as RGB but search space '{space.name}' has in_chans={space.in_chans}; "
                "use a space with in_chans 3 (e.g. autoformer-t) or --data fmnist"
            )
    return D.DataConfig.for_data(data, img_size=space.img_size, in_chans=space.in_chans, **overrides)


def _config(space: SearchSpace, recorded: RecordedData | None, data: str | None,
            recipe: Mapping[str, Any] | None, data_override: DataOverride) -> tuple[D.DataConfig, str]:
    saved = recorded.data if recorded is not None else None
    if data is None:
        if not saved:
            where = recorded.where if recorded is not None else "the run"
            raise RunDataMissing(
                f"{where} records no data (an imported AutoFormer supernet?); pass --data fmnist or --data PATH "
                "(ImageNet-style folder) and a held-out split is carved with --seed"
            )
        return D.DataConfig(**saved), "recorded with the checkpoint"
    if data_override == "preset":
        return data_config_for(data, space, recipe), "--data"
    if saved:
        return D.DataConfig(**{**saved, "data": str(data)}), "--data (recipe recorded with the checkpoint)"
    return D.DataConfig.for_data(str(data)), "--data"


def _same_data(saved: Mapping[str, Any] | None, dc: D.DataConfig, rule: SplitReuse) -> bool:
    if rule == "always":
        return True
    if not saved:
        return False
    if rule == "same_name":
        return D.DataConfig(**saved).data == dc.data
    name = saved.get("data")
    if name is None or D.DataConfig(data=name).is_fmnist != dc.is_fmnist:
        return False
    return dc.is_fmnist or name == dc.data


def _split(recorded: RecordedData | None, dc: D.DataConfig,
           rule: SplitReuse) -> tuple[dict[str, Any] | None, Path | None, str]:
    if rule == "never":
        return None, None, "new (no held-out split wanted)"
    if recorded is None or not recorded.readable:
        where = recorded.where if recorded is not None else "the run"
        return None, None, f"new ({where} records no split)"
    if recorded.split_path is None:
        return None, None, f"new ({recorded.where} has no split.json)"
    if not _same_data(recorded.data, dc, rule):
        trained_on = (recorded.data or {}).get("data")
        return None, None, f"new ({recorded.where} was trained on {trained_on}, not on {dc.data})"
    path = recorded.split_path
    return D.load_split(path), path, f"reused from {recorded.where} ({path})"


def resolve_run_data(
    space: SearchSpace,
    recorded: RecordedData | None = None,
    data: str | None = None,
    recipe: Mapping[str, Any] | None = None,
    *,
    data_override: DataOverride = "preset",
    fit_space: bool = False,
    reuse_split: SplitReuse = "same_source",
) -> RunData:
    """The DataConfig and held-out split a run uses (see the module docstring for the three parameters).

    `recorded` is what the run (or the supernet it builds on) recorded; `data` the user's `--data` (None: the
    recorded data, else RunDataMissing); `recipe` the recipe options (RECIPE_OPTIONS) for the "preset" override.
    """
    config, data_source = _config(space, recorded, data, recipe, data_override)
    if fit_space:
        # The model decides the input size; a mismatched recipe would only fail later, inside the forward pass.
        config = D.DataConfig(**{**config.to_dict(), "img_size": space.img_size, "in_chans": space.in_chans})
    split, split_path, split_source = _split(recorded, config, reuse_split)
    return RunData(config, split, split_path, data_source, split_source)
