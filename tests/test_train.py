"""Supernet and MoLE training on real Fashion-MNIST subsets: run records, frozen supernet, router warm-up,
baselines, NaN stop, CLI errors, eval, import, and the key check that MoLE beats the frozen supernet."""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import cli_subprocess, requires_fmnist, run_cli, subprocess_env
from taslora_core import data as D
from taslora_core.checkpoint import SUPERNET_WEIGHTS, file_sha256, load_supernet
from taslora_core.evaluate import folded_tensors
from taslora_core.train.optim import autoformer_param_groups, supernet_optimizers
from taslora_core.run_io import load_checkpoint, supernet_dir_of
from taslora_core.space import SearchSpace
from taslora_core.subnet import sample_subnet
from taslora_core.supernet import Supernet
from taslora_core.train import MoLETask, MoLETrainConfig, train_mole
from taslora_core.train.loop import TRAIN_STATE

pytestmark = requires_fmnist

# MoLE-vs-frozen check: mean over 8 fixed random subnets of the per-image val loss difference on 2000 held-out
# images. Measured (this machine, seeds 0/1/2 of the MoLE run on the same supernet): improvement 0.030 / 0.014 /
# 0.028 with a paired standard error of ~0.0024. Required: > max(MIN_IMPROVEMENT, 3 standard errors).
MIN_IMPROVEMENT = 0.008
N_SUBNETS, N_VAL = 8, 2000


def _one_line_error(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def _per_image_losses(run_dir: Path, n_val: int = N_VAL, n_subnets: int = N_SUBNETS):
    ck = load_checkpoint(run_dir)
    dc = D.DataConfig(**ck.data)
    bundle = D.build_data(dc, split=D.load_split(ck.split_path), val_subset=n_val)
    loader = D.make_loaders(bundle, dc, batch_size=500).val
    rng = random.Random(1234)
    subnets = [sample_subnet(ck.supernet.space, rng) for _ in range(n_subnets)]
    ck.supernet.eval()
    with_e, without = [], []
    with torch.no_grad():
        for sn in subnets:
            t_with = folded_tensors(ck.supernet, sn, ck.mole, True)
            t_without = folded_tensors(ck.supernet, sn, None, False)
            a, b = [], []
            for x, y in loader:
                a.append(F.cross_entropy(ck.supernet.forward_tensors(x, sn, t_with), y, reduction="none"))
                b.append(F.cross_entropy(ck.supernet.forward_tensors(x, sn, t_without), y, reduction="none"))
            with_e.append(torch.cat(a))
            without.append(torch.cat(b))
    return torch.stack(with_e), torch.stack(without)  # (subnets, images)


# ---------------------------------------------------------------------- the key check
def test_mole_improves_validation_loss_over_frozen_supernet(trained_workspace) -> None:
    with_e, without = _per_image_losses(trained_workspace["mole_dir"])
    diff = (without - with_e).mean(dim=0)  # per image, averaged over the subnets
    improvement = diff.mean().item()
    se = diff.std().item() / math.sqrt(diff.numel())
    per_subnet = (without - with_e).mean(dim=1).tolist()
    print(f"\nval loss without experts {without.mean():.4f}, with {with_e.mean():.4f}: improvement "
          f"{improvement:.4f} (paired SE {se:.4f}, z {improvement / se:.1f}); per subnet {[round(v, 4) for v in per_subnet]}")
    assert improvement > max(MIN_IMPROVEMENT, 3 * se), (improvement, se)
    assert sum(v > 0 for v in per_subnet) >= N_SUBNETS - 2  # not one lucky subnet


# ---------------------------------------------------------------------- run records
def test_run_folders_record_data_split_and_supernet(trained_workspace) -> None:
    sdir, mdir = trained_workspace["supernet_dir"], trained_workspace["mole_dir"]
    meta = json.loads((sdir / "space.json").read_text())
    assert meta["split"] == "split.json" and meta["data"]["data"] == "fmnist" and meta["kind"] == "supernet"
    D.DataConfig(**meta["data"])  # a valid DataConfig dict
    s_split, m_split = D.load_split(sdir / "split.json"), D.load_split(mdir / "split.json")
    assert len(s_split["val_indices"]) == 10000
    assert m_split["val_indices"] == s_split["val_indices"]  # MoLE never validates on supernet training images
    train_idx, _ = D.split_indices(s_split)
    assert not set(train_idx.tolist()) & set(m_split["val_indices"])

    mole = json.loads((mdir / "mole.json").read_text())
    assert supernet_dir_of(mdir, mole) == sdir.resolve()
    assert mole["supernet_sha256"] == file_sha256(sdir / SUPERNET_WEIGHTS)
    assert mole["mode"] == "mole" and mole["split"] == "split.json" and mole["data"]["data"] == "fmnist"
    assert mole["train"]["expert_lr"] == 1e-2 and mole["train"]["epochs"] == 4

    for run in (sdir, mdir):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert {r["type"] for r in records} == {"step", "epoch"}
        summary = json.loads((run / "summary.json").read_text())
        assert {"largest", "smallest"} <= set(summary["val"]) and summary["train_images_per_s"] > 0
        state = torch.load(run / TRAIN_STATE, map_location="cpu", weights_only=True)
        assert state["finished"] is True and state["global_step"] == summary["global_steps"]
    mole_summary = json.loads((mdir / "summary.json").read_text())
    assert set(mole_summary["val"]["largest"]) >= {"with_experts", "without_experts"}
    ck = load_checkpoint(mdir)
    assert ck.kind == "mole" and ck.mole.num_experts == len(ck.supernet.space.groups())


# ---------------------------------------------------------------------- frozen supernet, router warm-up
def test_mole_training_changes_only_experts_and_router_after_warmup(trained_workspace, tmp_path) -> None:
    sdir = trained_workspace["supernet_dir"]
    snaps: dict[str, dict[str, torch.Tensor]] = {}

    def snap(event: str, info: dict) -> None:
        model = info["model"]
        key = event if event == "start" else f"epoch{info['epoch']}"
        snaps[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    cfg = MoLETrainConfig(
        workdir=str(tmp_path), supernet=str(sdir), epochs=2, warmup_epochs=1, train_subset=256, batch_size=32,
        recipe="paper", expert_lr=1e-3, warmup_start_lr=1e-5, val_subset=64, summary_subnets=0, log_every=1, quiet=True,
    )  # the paper's recipe: its router LR (0.1) is checked below
    run = train_mole(cfg, callback=snap)
    original = load_supernet(sdir).state_dict()
    for name in ("epoch0", "epoch1"):
        for k, v in original.items():
            assert torch.equal(snaps[name][f"supernet.{k}"], v), k  # the supernet never moves
    router = [k for k in snaps["start"] if k.startswith("router.")]
    experts = [k for k in snaps["start"] if k.startswith("experts.")]
    assert router and experts
    assert all(torch.equal(snaps["epoch0"][k], snaps["start"][k]) for k in router)  # frozen in warm-up
    assert any(not torch.equal(snaps["epoch0"][k], snaps["start"][k]) for k in experts)
    moved = [k for k in router if not torch.equal(snaps["epoch1"][k], snaps["epoch0"][k])]
    assert "router.head_bias" in moved and len(moved) >= len(router) // 2  # the router trains after warm-up

    steps = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["type"] == "step"]
    assert [r["global_step"] for r in steps] == list(range(1, 17))
    warm = [r["lr"]["experts"] for r in steps[:8]]
    assert warm[0] == pytest.approx(1e-5)
    slope = (1e-3 - 1e-5) / 8
    assert all(b - a == pytest.approx(slope, rel=1e-6) for a, b in zip(warm, warm[1:]))  # linear rise
    assert all(r["lr"]["router"] == 0.0 for r in steps[:8])
    assert steps[8]["lr"]["experts"] == pytest.approx(1e-3) and steps[8]["lr"]["router"] == pytest.approx(0.1)
    assert steps[-1]["lr"]["experts"] < 1e-3 and steps[-1]["lr"]["router"] < 0.1  # cosine decay


# ---------------------------------------------------------------------- baselines
def test_single_lora_and_finetune_modes_run(trained_workspace, tmp_path) -> None:
    sdir = trained_workspace["supernet_dir"]
    sha = file_sha256(sdir / SUPERNET_WEIGHTS)
    common = ["--supernet", sdir, "--epochs", "1", "--warmup-epochs", "0", "--train-subset", "128", "--batch-size", "32",
              "--val-subset", "64", "--summary-subnets", "0", "--quiet", "--workdir", tmp_path]
    res = run_cli(["train", "--mode", "single-lora", *common])
    assert res.exit_code == 0, res.output
    (mdir,) = list((tmp_path / "mole").iterdir())
    meta = json.loads((mdir / "mole.json").read_text())
    assert meta["mode"] == "single-lora" and meta["config"]["num_experts"] == 1
    assert load_checkpoint(mdir).mole.num_experts == 1

    res = run_cli(["train", "--mode", "finetune", "--expert-lr", "1e-3", *common])
    assert res.exit_code == 0, res.output
    (fdir,) = list((tmp_path / "supernets").iterdir())
    meta = json.loads((fdir / "space.json").read_text())
    assert meta["mode"] == "finetune" and meta["finetuned_from_sha256"] == sha
    assert (fdir / meta["finetuned_from"]).resolve() == sdir.resolve()
    ck = load_checkpoint(fdir)
    assert ck.kind == "supernet" and ck.split_path is not None
    before, after = load_supernet(sdir).state_dict(), ck.supernet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the weights were trained
    assert file_sha256(sdir / SUPERNET_WEIGHTS) == sha  # the source supernet is untouched
    summary = json.loads((fdir / "summary.json").read_text())
    assert set(summary["val"]["largest"]) >= {"finetuned", "original"}


# ---------------------------------------------------------------------- NaN stop
def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(trained_workspace, tmp_path, monkeypatch) -> None:
    # Poison the logits of the 4th training step (global step index 3) from the test side.
    real_forward, steps = MoLETask.forward, []

    def forward_nan_at_step_3(self, images, subnet):
        steps.append(len(steps))
        logits = real_forward(self, images, subnet)
        return logits * float("nan") if steps[-1] == 3 else logits

    monkeypatch.setattr(MoLETask, "forward", forward_nan_at_step_3)
    res = run_cli(["train", "--supernet", trained_workspace["supernet_dir"], "--epochs", "1", "--train-subset", "256",
                   "--batch-size", "32", "--save-every-steps", "2", "--val-subset", "64", "--recipe", "paper",
                   "--quiet", "--workdir", tmp_path])  # paper: one forward per step, so forward 4 is step 4
    assert res.exit_code == 3
    line = _one_line_error(res)
    assert "nan" in line.lower() and "global step 4" in line and "checkpoint" in line
    (run,) = list((tmp_path / "mole").iterdir())
    state = torch.load(run / TRAIN_STATE, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 and state["finished"] is False
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run / "mole.safetensors").exists()


# ---------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize(
    "args, needle",
    [
        (["supernet", "train", "--space", "no-such-space"], "no-such-space"),
        (["supernet", "train", "--data", "/no/such/folder"], "/no/such/folder"),
        (["train"], "no finished supernets run"),
        (["train", "--supernet", "/no/such/run"], "not a taslora supernet"),
        (["train", "--mode", "bogus"], "bogus"),
        (["eval", "--subnet", "largest"], "no finished mole run"),
        (["supernet", "import", "/no/such.pth"], "does not exist"),
        (["supernet", "train", "--epochs", "0"], "--epochs"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, needle, tmp_path) -> None:
    res = run_cli([*args, "--workdir", tmp_path])
    assert res.exit_code == 2, res.output
    assert needle in _one_line_error(res)


def test_cli_bad_data_path_for_train_exits_2(trained_workspace, tmp_path) -> None:
    res = run_cli(["train", "--supernet", trained_workspace["supernet_dir"], "--data", tmp_path / "missing",
                   "--workdir", tmp_path])
    assert res.exit_code == 2
    assert "missing" in _one_line_error(res)


def test_console_script_exit_code_2(tmp_path) -> None:
    proc = subprocess.run(cli_subprocess(["supernet", "train", "--space", "nope", "--workdir", tmp_path]),
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 2
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1 and "nope" in proc.stderr


# ---------------------------------------------------------------------- eval
def test_eval_reproduces_summary_with_and_without_experts(trained_workspace, tmp_path) -> None:
    # A private copy of the shared workspace, so that "the latest MoLE run" is certainly the fixture's.
    ws = tmp_path / "ws"
    for kind in ("supernets", "mole"):
        shutil.copytree(trained_workspace["workdir"] / kind, ws / kind, ignore=shutil.ignore_patterns(TRAIN_STATE))
    mdir = ws / "mole" / trained_workspace["mole_dir"].name
    summary = json.loads((mdir / "summary.json").read_text())["val"]["largest"]
    base = ["eval", "--subnet", "largest", "--val-subset", "500", "--json", "--workdir", ws]
    with_e = json.loads(run_cli(base).stdout)  # no --ckpt: the latest MoLE run of the workspace
    without = json.loads(run_cli([*base, "--ckpt", mdir, "--no-experts"]).stdout)
    assert with_e["checkpoint"] == str(mdir) and with_e["count"] == 500
    assert with_e["loss"] == pytest.approx(summary["with_experts"]["loss"], abs=1e-5)
    assert without["loss"] == pytest.approx(summary["without_experts"]["loss"], abs=1e-5)
    assert with_e["top1"] == pytest.approx(summary["with_experts"]["top1"])

    sub = tmp_path / "sub.json"
    sample_subnet(SearchSpace.preset("fmnist"), random.Random(0)).to_json(sub)
    res = run_cli(["eval", "--ckpt", mdir, "--subnet", sub, "--split", "test", "--workdir", tmp_path])
    assert res.exit_code == 0, res.output
    assert "test images" in res.stdout and "checkpoint:" in res.stdout and "split: test set" in res.stdout
    res = run_cli(["eval", "--ckpt", trained_workspace["supernet_dir"], "--subnet", "smallest", "--val-subset", "200",
                   "--workdir", tmp_path])
    assert res.exit_code == 0 and "without experts" in res.stdout and "held-out val from" in res.stdout


# ---------------------------------------------------------------------- import
def test_supernet_import_of_an_autoformer_checkpoint(tmp_path) -> None:
    space = SearchSpace.preset("fmnist")
    torch.manual_seed(0)
    model = Supernet(space)
    ckpt = tmp_path / "supernet-fmnist.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=5e-4), "epoch": 3}, ckpt)
    res = run_cli(["supernet", "import", ckpt, "--space", "fmnist", "--workdir", tmp_path / "ws"])
    assert res.exit_code == 0, res.output
    (run,) = list((tmp_path / "ws" / "supernets").iterdir())
    loaded = load_file(str(run / SUPERNET_WEIGHTS))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert json.loads((run / "space.json").read_text())["imported_from"] == str(ckpt.resolve())
    torch.save({"weights": {}}, tmp_path / "bad.pth")
    res = run_cli(["supernet", "import", tmp_path / "bad.pth", "--space", "fmnist", "--workdir", tmp_path / "ws"])
    assert res.exit_code == 2 and "'model'" in _one_line_error(res)


# ---------------------------------------------------------------------- optimiser recipe
def test_autoformer_no_decay_groups_and_supernet_schedule() -> None:
    model = Supernet(SearchSpace.preset("fmnist"))
    no_decay, decay = autoformer_param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert {"pos_embed", "cls_token", "blocks.0.attn.qkv.bias", "blocks.0.attn_layer_norm.weight", "norm.weight"} <= nd
    assert {"blocks.0.attn.rel_pos_embed_k.embeddings_table_v", "blocks.0.fc1.weight", "head.weight",
            "patch_embed_super.proj.weight"} <= d
    assert len(nd) + len(d) == len(names)

    opt = supernet_optimizers(model, lr=1e-3, total_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    lrs = []
    for t in range(100):
        opt.prepare(t)
        lrs.append(opt.lrs()["supernet"])
    assert lrs[0] == pytest.approx(1e-6) and lrs[10] == pytest.approx(1e-3, rel=0.03)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)


def test_recorded_epochs_reads_train_config_and_falls_back_only_when_asked(tmp_path) -> None:
    import json as _json

    from taslora_core.checkpoint import CheckpointError
    from taslora_core.train.run_files import recorded_epochs

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match="records no training epochs"):
        recorded_epochs(run)
    assert recorded_epochs(run, default=6) == 6  # e.g. an imported AutoFormer supernet
    (run / "train_config.json").write_text(_json.dumps({"kind": "supernet", "config": {"epochs": 60}}))
    assert recorded_epochs(run) == 60 and recorded_epochs(run, default=6) == 60
