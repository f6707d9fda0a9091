"""Tests for taslora_core.run_data: which data config and held-out split a run uses (no image data needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taslora_core import data as D
from taslora_core.run_data import RecordedData, RunDataMissing, recipe_overrides, resolve_run_data
from taslora_core.space import SearchSpace


@pytest.fixture()
def space() -> SearchSpace:
    return SearchSpace.resolve("fmnist")


def _run(tmp_path: Path, data: dict | None, split: bool = True, name: str = "run") -> RecordedData:
    """A run folder whose space.json records `data` and, with `split`, a saved split.json."""
    run = tmp_path / name
    run.mkdir()
    meta: dict = {"split": "split.json"} if split else {}
    if data is not None:
        meta["data"] = data
    if split:
        D.save_split(run / "split.json", D.make_split(100, 20, seed=5, data="fmnist"))
    (run / "space.json").write_text(json.dumps(meta))
    return RecordedData.read(run, "space.json", "the supernet run")


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "imgs" / "train").mkdir(parents=True)
    return tmp_path / "imgs"


def test_recorded_data_and_split_are_used_without_data(tmp_path: Path, space: SearchSpace) -> None:
    recorded = _run(tmp_path, D.DataConfig.fmnist(smoothing=0.3).to_dict())
    rd = resolve_run_data(space, recorded)
    assert rd.config.smoothing == 0.3 and rd.data_source == "recorded with the checkpoint"
    assert rd.split is not None and rd.split["seed"] == 5 and rd.split_path == tmp_path / "run" / "split.json"
    assert rd.split_source.startswith("reused from the supernet run") and "held-out" not in rd.split_source
    assert "Fashion-MNIST" in rd.describe()


def test_missing_data_is_one_error_of_both_kinds(tmp_path: Path, space: SearchSpace) -> None:
    recorded = _run(tmp_path, None)
    with pytest.raises(RunDataMissing, match="--data") as err:
        resolve_run_data(space, recorded)
    assert isinstance(err.value, D.DataUnavailable) and isinstance(err.value, ValueError)


def test_preset_override_ignores_recorded_recipe_and_applies_options(tmp_path: Path, space: SearchSpace) -> None:
    recorded = _run(tmp_path, D.DataConfig.fmnist(smoothing=0.3).to_dict())
    rd = resolve_run_data(space, recorded, "fmnist", {"mixup": 0.5, "auto_augment": "none", "cutmix": None})
    assert rd.config.smoothing == 0.1 and rd.config.mixup == 0.5 and rd.config.cutmix == 0.0
    assert rd.config.auto_augment is None and rd.data_source == "--data"


def test_keep_recipe_override_swaps_only_the_path(tmp_path: Path, space: SearchSpace) -> None:
    recorded = _run(tmp_path, D.DataConfig.fmnist(smoothing=0.3).to_dict())
    rd = resolve_run_data(space, recorded, "fashion-mnist", data_override="keep_recipe")
    assert rd.config.data == "fashion-mnist" and rd.config.smoothing == 0.3
    assert rd.data_source == "--data (recipe recorded with the checkpoint)"


def test_fit_space_forces_the_model_input_size(tmp_path: Path, space: SearchSpace) -> None:
    recorded = _run(tmp_path, D.DataConfig.fmnist(img_size=32).to_dict())
    assert resolve_run_data(space, recorded).config.img_size == 32
    assert resolve_run_data(space, recorded, fit_space=True).config.img_size == space.img_size


def test_split_reuse_rules(tmp_path: Path, space: SearchSpace) -> None:
    alias = _run(tmp_path, D.DataConfig.fmnist(data="fashion-mnist").to_dict(), name="alias")
    # the same data under another name: reused by "same_source" and "always", not by "same_name"
    assert resolve_run_data(space, alias, "fmnist", reuse_split="same_source").split is not None
    assert resolve_run_data(space, alias, "fmnist", reuse_split="always").split is not None
    exact = resolve_run_data(space, alias, "fmnist", reuse_split="same_name")
    assert exact.split is None and exact.split_source == "new (the supernet run was trained on fashion-mnist, not on fmnist)"
    assert resolve_run_data(space, alias, reuse_split="never").split is None


def test_split_of_other_data_is_not_reused(tmp_path: Path) -> None:
    rgb = SearchSpace.resolve("autoformer-t")
    recorded = _run(tmp_path, D.DataConfig.fmnist().to_dict())
    rd = resolve_run_data(rgb, recorded, str(_folder(tmp_path)))
    assert rd.split is None and "was trained on fmnist" in rd.split_source
    assert rd.config.data == str((tmp_path / "imgs").resolve()) and rd.config.img_size == rgb.img_size


def test_no_split_file_and_unreadable_metadata(tmp_path: Path, space: SearchSpace) -> None:
    no_split = _run(tmp_path, D.DataConfig.fmnist().to_dict(), split=False)
    assert resolve_run_data(space, no_split).split_source == "new (the supernet run has no split.json)"
    unreadable = RecordedData.read(tmp_path / "nowhere", "space.json", "the supernet run")
    assert not unreadable.readable
    assert resolve_run_data(space, unreadable, "fmnist").split_source == "new (the supernet run records no split)"


def test_folder_data_checks(tmp_path: Path, space: SearchSpace) -> None:
    with pytest.raises(D.DataUnavailable, match="train"):
        resolve_run_data(space, None, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="in_chans"):
        resolve_run_data(space, None, str(_folder(tmp_path)))  # the fmnist space is grey-scale


def test_recipe_overrides_only_takes_recipe_options() -> None:
    assert recipe_overrides({"mixup": 1, "re_prob": None, "epochs": 3, "auto_augment": "rand-m9"}) == {
        "mixup": 1.0, "auto_augment": "rand-m9",
    }
