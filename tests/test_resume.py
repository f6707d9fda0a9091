"""SIGKILL a training process mid-run, resume it, and check it finishes exactly as an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import cli_subprocess, requires_fmnist, subprocess_env
from taslora_core.run_io import load_checkpoint
from taslora_core.train.loop import TRAIN_STATE

pytestmark = requires_fmnist


def _kill_after_first_checkpoint(args: list, run_base: Path, timeout: float = 180.0) -> Path:
    """Start `taslora ARGS`, SIGKILL it as soon as a step checkpoint exists; return the run folder."""
    proc = subprocess.Popen(cli_subprocess(args), env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            found = list(run_base.glob(f"*/{TRAIN_STATE}")) if run_base.exists() else []
            if found:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                raise AssertionError(f"training ended before its first checkpoint: {proc.stderr.read()}")
            time.sleep(0.01)
        else:
            raise AssertionError("no checkpoint appeared in time")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (run,) = [p for p in run_base.iterdir() if p.is_dir()]
    return run


def _run(args: list) -> subprocess.CompletedProcess:
    proc = subprocess.run(cli_subprocess(args), env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_mole_resume_after_sigkill_equals_uninterrupted_run(trained_workspace, tmp_path) -> None:
    """Killed, then the whole workspace is moved (the supernet path train_config.json records is gone): the
    resume finds the supernet at the same place in the moved workspace and finishes as the uninterrupted run."""
    common = ["--epochs", "2", "--warmup-epochs", "1", "--train-subset", "480", "--batch-size", "32",
              "--save-every-steps", "3", "--val-subset", "64", "--summary-subnets", "0", "--log-every", "1",
              "--threads", "1", "--quiet", "--seed", "3"]
    ref_ws, ws, moved = tmp_path / "reference", tmp_path / "killed", tmp_path / "moved"
    _run(["train", "--supernet", trained_workspace["supernet_dir"], *common, "--workdir", ref_ws])
    supernet = ws / "supernets" / trained_workspace["supernet_dir"].name  # the same weights, inside the workspace
    shutil.copytree(trained_workspace["supernet_dir"], supernet)

    run = _kill_after_first_checkpoint(["train", "--supernet", supernet, *common, "--workdir", ws], ws / "mole")
    assert not (run / "mole.safetensors").exists()  # killed before the end
    killed_at = torch.load(run / TRAIN_STATE, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < killed_at < 30
    assert json.loads((run / "train_config.json").read_text())["supernet_dir"] == str(supernet.resolve())
    ws.rename(moved)
    run = moved / "mole" / run.name

    out = _run(["train", "--resume", "latest", "--quiet", "--threads", "1", "--workdir", moved])
    assert f"resuming {run}" in out.stdout
    assert f"supernet: {(moved / 'supernets' / supernet.name).resolve()}" in out.stdout
    ck = load_checkpoint(run)
    assert ck.kind == "mole"

    (ref_run,) = list((ref_ws / "mole").iterdir())
    ref, got = load_file(str(ref_run / "mole.safetensors")), load_file(str(run / "mole.safetensors"))
    assert sorted(ref) == sorted(got)
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed run differs from the uninterrupted one"
    steps = [json.loads(x)["global_step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "step"]
    assert steps == list(range(1, 31))  # no step lost or logged twice
    state = torch.load(run / TRAIN_STATE, map_location="cpu", weights_only=True)
    assert state["finished"] is True and state["global_step"] == 30


def test_supernet_resume_latest_after_sigkill(tmp_path) -> None:
    args = ["supernet", "train", "--epochs", "2", "--train-subset", "640", "--batch-size", "32", "--val-subset", "64",
            "--summary-subnets", "0", "--save-every-steps", "4", "--threads", "1", "--quiet", "--workdir", tmp_path]
    run = _kill_after_first_checkpoint(args, tmp_path / "supernets")
    assert not (run / "supernet.safetensors").exists()
    out = _run(["supernet", "train", "--resume", "latest", "--quiet", "--workdir", tmp_path])
    assert "resuming" in out.stdout
    ck = load_checkpoint(run)
    assert ck.kind == "supernet" and ck.split_path == run / "split.json"
    state = torch.load(run / TRAIN_STATE, map_location="cpu", weights_only=True)
    assert state["finished"] is True and state["global_step"] == 40
    assert all(torch.isfinite(v).all() for v in state["model"].values())
