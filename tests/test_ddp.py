"""Data-parallel MoLE training: 2 CPU processes under torchrun (gloo) end with identical experts and router."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import requires_fmnist, subprocess_env
from taslora_core.checkpoint import load_supernet
from taslora_core.mole import MoLEConfig, MoLEModel

pytestmark = requires_fmnist


def test_two_rank_training_keeps_ranks_identical(trained_workspace, tmp_path) -> None:
    dump = tmp_path / "dump"
    env = subprocess_env()
    # The entry point installs a training callback that writes each rank's final trainable tensors to `dump`.
    entry = Path(__file__).with_name("ddp_rank_dump.py")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(entry), str(dump), "train", "--supernet", str(trained_workspace["supernet_dir"]),
        "--epochs", "2", "--warmup-epochs", "1", "--train-subset", "512", "--batch-size", "32",
        "--expert-lr", "2e-3", "--val-subset", "128", "--summary-subnets", "0", "--threads", "1", "--quiet",
        "--workdir", str(tmp_path / "ws"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stdout  # really ran data-parallel

    r0, r1 = load_file(str(dump / "rank0.safetensors")), load_file(str(dump / "rank1.safetensors"))
    assert sorted(r0) == sorted(r1)
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, f"ranks diverged in {differ[:5]}"

    # Training really happened on both parts: experts and router moved away from their initialisation.
    torch.manual_seed(0)
    init = MoLEModel(load_supernet(trained_workspace["supernet_dir"]), MoLEConfig()).trainable_state()
    assert any(not torch.equal(init[k], r0[k]) for k in init if k.startswith("router."))
    assert any(not torch.equal(init[k], r0[k]) for k in init if k.startswith("experts."))

    runs = [p for p in (tmp_path / "ws" / "mole").iterdir() if p.is_dir()]
    assert len(runs) == 1  # only rank 0 wrote a run folder
    saved = load_file(str(runs[0] / "mole.safetensors"))
    assert all(torch.equal(saved[k], r0[k]) for k in r0)
