"""The training commands' options are derived from the config dataclasses: same spellings, defaults and values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import run_cli
from taslora_cli import cmd_train
from taslora_core.train import MoLETrainConfig, RunResult, SupernetTrainConfig

# The documented spellings: renaming one breaks users' command lines.
COMMON_FLAGS = [
    "--epochs", "--batch-size", "--data", "--val-size", "--val-subset", "--train-subset", "--mixup", "--cutmix",
    "--smoothing", "--auto-augment", "--re-prob", "--drop-path", "--warmup-epochs", "--weight-decay", "--min-lr",
    "--device", "--amp", "--no-amp", "--threads", "--save-every-steps", "--log-every", "--clip-grad",
    "--eval-batch-size", "--workers", "--summary-subnets", "--name", "--quiet", "--resume", "--workdir", "--seed",
]
MOLE_FLAGS = ["--supernet", "--mode", "--experts", "--rank", "--lora-alpha", "--router", "--router-init",
              "--router-depth", "--no-router-depth", "--beta", "--expert-lr", "--router-lr", "--warmup-start-lr"]
SUPERNET_FLAGS = ["--space", "--lr", "--warmup-lr"]


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Replace both trainers by recorders of the config and resume argument they are called with."""
    calls: list[tuple[object, object]] = []

    def record(cfg, resume=None, log=None):
        calls.append((cfg, resume))
        return RunResult(tmp_path, {"kind": getattr(cfg, "mode", "supernet")})

    monkeypatch.setattr(cmd_train, "train_mole", record)
    monkeypatch.setattr(cmd_train, "train_supernet", record)
    return calls


@pytest.mark.parametrize("argv, flags", [(["train"], COMMON_FLAGS + MOLE_FLAGS),
                                         (["supernet", "train"], COMMON_FLAGS + SUPERNET_FLAGS)])
def test_help_lists_every_option(argv, flags) -> None:
    res = run_cli([*argv, "--help"])
    assert res.exit_code == 0
    words = set(res.output.replace("/", " ").split())
    missing = [f for f in flags if f not in words]
    assert not missing, missing


@pytest.mark.parametrize("argv, config_cls", [(["train"], MoLETrainConfig), (["supernet", "train"], SupernetTrainConfig)])
def test_no_options_give_the_config_defaults(captured, argv, config_cls) -> None:
    res = run_cli(argv)
    assert res.exit_code == 0, res.output
    ((cfg, resume),) = captured
    assert cfg == config_cls() and resume is None


def test_options_reach_the_config(captured, tmp_path) -> None:
    res = run_cli(["train", "--supernet", tmp_path / "sn", "--workers", "2", "--no-amp", "--router-depth", "--quiet",
                   "--min-lr", "3e-6", "--experts", "5", "--workdir", tmp_path / "ws", "--seed", "7",
                   "--resume", "latest"])
    assert res.exit_code == 0, res.output
    ((cfg, resume),) = captured
    expected = dataclasses.replace(MoLETrainConfig(), supernet=str(tmp_path / "sn"), num_workers=2, amp=False,
                                   router_depth=True, quiet=True, min_lr=3e-6, experts=5,
                                   workdir=str(tmp_path / "ws"), seed=7)
    assert cfg == expected and resume == "latest"
    assert isinstance(cfg.supernet, str) and isinstance(cfg.workdir, str)  # stored as in train_config.json
    assert Path(cfg.workdir) == tmp_path / "ws"
