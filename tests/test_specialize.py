"""`taslora specialize`: one subnet fine-tuned alone from its routed mixture, early-stopped on held-out validation
images only, resumable, folded exactly by `taslora export` (and `export --family --specialize-epochs`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import requires_fmnist
from taslora_cli.main import app
from taslora_core import data as D
from taslora_core import workspace
from taslora_core.checkpoint import SUPERNET_WEIGHTS, file_sha256, save_supernet
from taslora_core.evaluate import evaluate
from taslora_core.mole_io import save_mole
from taslora_core.run_io import load_checkpoint
from taslora_core.search import Constraints, ParetoFront, ParetoMember, measure, write_pareto
from taslora_core.space import SearchSpace
from taslora_core.specialize import (
    SpecializeConfig, SubnetDeltas, find_specialized, read_specialized, specialize,
)
from taslora_core.specialize.run_files import DELTAS_FILE, SPECIALIZE_JSON
from taslora_core.subnet import Subnet
from taslora_core.testing import random_mole

runner = CliRunner()
SUBNET = Subnet.from_dict({"embed_dim": 64, "depth": 4, "mlp_ratio": [2.0, 3.0, 2.0, 3.0], "num_heads": [2, 3, 2, 2]})
OTHER = Subnet.from_dict({"embed_dim": 80, "depth": 4, "mlp_ratio": [3.0] * 4, "num_heads": [2] * 4})
TRAIN_IMAGES = 512  # the runs' training split: one epoch = 4 steps at batch 128
# a tiny, quick budget: every run below shares these settings unless a test says otherwise
FAST = {"val_subset": 256, "batch_size": 64, "eval_every": 4, "lr": 5e-3, "min_lr": 5e-5, "threads": 1, "quiet": True}


def _save_workspace(root: Path, model, name: str = "m") -> dict[str, Path]:
    """A supernet run and a MoLE run on it (as `save_mole_workspace`), whose held-out split keeps only
    TRAIN_IMAGES training images so that epochs are a few steps."""
    split = D.make_split(60000, 10000, 0, train_subset=TRAIN_IMAGES, data="fmnist")
    extra = {"data": D.DataConfig.fmnist().to_dict(), "split": "split.json"}
    sdir = workspace.new_run(root, "supernets", name)
    D.save_split(sdir / "split.json", split)
    save_supernet(sdir, model.supernet, extra)
    mdir = workspace.new_run(root, "mole", name)
    D.save_split(mdir / "split.json", split)
    save_mole(mdir, model, {**extra, "supernet_dir": str(sdir.resolve()),
                            "supernet_sha256": file_sha256(sdir / SUPERNET_WEIGHTS)})
    return {"root": root, "supernet": sdir, "mole": mdir}


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("specialize")
    found = _save_workspace(root, random_mole("fmnist", expert_std=0.05))
    (root / "subnet.json").write_text(json.dumps(SUBNET.to_dict()))
    return found


def _config(ws: dict[str, Path], **kw) -> SpecializeConfig:
    return SpecializeConfig(**{"workdir": str(ws["root"]), "subnet": json.dumps(SUBNET.to_dict()),
                               "ckpt": str(ws["mole"]), "steps": 12, **FAST, **kw})


@pytest.fixture(scope="module")
def lora_run(ws):
    """The experts' factors at the fixed routing on a 12-step budget."""
    return specialize(_config(ws, weights="lora"))


def _val_loader(split_path: Path, n: int):
    dc = D.DataConfig.fmnist()
    bundle = D.build_data(dc, split=D.load_split(split_path), val_subset=n)
    return D.make_loaders(bundle, dc, batch_size=256, num_workers=0).val, bundle


# --------------------------------------------------------------------------- what is trained
@pytest.mark.parametrize("weights", ["lora", "linear", "single-lora"])
def test_every_mode_starts_at_the_routed_mixture_and_trains_only_its_own_tensors(ws, weights):
    ckpt = load_checkpoint(ws["mole"])
    mixture = ckpt.mole.deltas(SUBNET)
    module = SubnetDeltas(ckpt.supernet, SUBNET, weights, ckpt.mole)
    start = module.deltas()
    assert set(start) == set(mixture) and len(start) == 4 * SUBNET.depth
    for key, ref in mixture.items():
        assert start[key].shape == ref.shape
        assert torch.allclose(start[key], ref, atol=1e-6), key
    module.tensors()["blocks.0.fc1.weight"].sum().backward()
    trained = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    suffix = {"lora": ("fc1_U", "fc1_D"), "linear": ("fc1_W",), "single-lora": ("fc1_U",)}[weights]
    assert trained == {f"blocks.0.{s}" for s in suffix}  # U of a fresh LoRA is 0, so D gets no gradient yet
    assert all(p.grad is None for p in ckpt.supernet.parameters())  # the supernet is sliced once, frozen


def test_without_experts_the_lora_starts_from_zero(ws):
    ckpt = load_checkpoint(ws["supernet"])
    module = SubnetDeltas(ckpt.supernet, SUBNET, "lora", None, rank=4, alpha=8.0)
    assert all(float(d.detach().abs().max()) == 0.0 for d in module.deltas().values())
    assert module.blocks[0]["qkv_U"].shape[1] == 4


# --------------------------------------------------------------------------- the run
@requires_fmnist
def test_specialize_improves_validation_loss_from_the_routed_mixture(ws, lora_run):
    rec = lora_run.record
    assert rec["weights"] == "lora" and rec["source"]["kind"] == "mole" and rec["subnet"] == SUBNET.to_dict()
    assert rec["val_after"]["loss"] < rec["val_before"]["loss"] - 0.01  # a tiny budget already helps
    assert rec["best_step"] > 0 and rec["steps_run"] == rec["budget_steps"] == 12
    assert [c["step"] for c in rec["val_curve"]] == [0, 4, 8, 12]
    assert rec["cpu_seconds"] > 0 and rec["wall_seconds"] > 0
    # step 0 is the MoLE model itself, on the same held-out images
    loader, _ = _val_loader(lora_run.run_dir / "split.json", FAST["val_subset"])
    ckpt = load_checkpoint(ws["mole"])
    mole_val = evaluate(ckpt.supernet, SUBNET, loader, ckpt.mole)
    assert abs(mole_val.loss - rec["val_before"]["loss"]) < 1e-5 and mole_val.top1 == rec["val_before"]["top1"]
    # the saved deltas are the kept state: evaluating them gives the recorded validation numbers
    run = read_specialized(lora_run.run_dir)
    again = evaluate(ckpt.supernet, SUBNET, loader, run.delta_source())  # type: ignore[arg-type]
    assert abs(again.loss - rec["val_after"]["loss"]) < 1e-5
    # integrity: the record hashes what the export trusts; the run counts as finished
    assert rec["sha256"][DELTAS_FILE] == file_sha256(lora_run.run_dir / DELTAS_FILE)
    assert workspace.is_finished("specialized", lora_run.run_dir)
    assert "step 12/12" in (lora_run.run_dir / "log.txt").read_text()


@requires_fmnist
@pytest.mark.parametrize("metric", ["loss", "top1"])
def test_early_stopping_sees_only_held_out_validation_images(ws, tmp_path, monkeypatch, metric):
    """The test labels are poisoned (class 99: any evaluation on them raises) and every evaluated loader is
    recorded: only the first N held-out images of the run's split are ever evaluated; a learning rate that only
    hurts stops the run after `patience` evaluations and keeps the starting state."""
    from taslora_core.data import bundle as bundle_module
    from taslora_core.specialize import trainer

    real_load = bundle_module.load_fmnist

    def poisoned(split: str = "train", root=None):
        images, labels = real_load(split, root)
        return (images, torch.full_like(labels, 99)) if split in ("test", "t10k") else (images, labels)

    seen: list[torch.Tensor] = []
    real_evaluate = trainer.evaluate

    def spy(supernet, subnet, batches, *args, **kwargs):
        seen.append(batches.source.indices.clone())
        return real_evaluate(supernet, subnet, batches, *args, **kwargs)

    monkeypatch.setattr(bundle_module, "load_fmnist", poisoned)
    monkeypatch.setattr(trainer, "evaluate", spy)
    result = specialize(_config(ws, workdir=str(tmp_path), weights="linear", lr=3.0, min_lr=3.0, steps=40,
                                patience=2, patience_after=0.0, metric=metric))
    rec = result.record
    split = D.load_split(ws["mole"] / "split.json")
    held_out = torch.tensor(split["val_indices"][:FAST["val_subset"]])
    train_idx, _ = D.split_indices(split)
    assert seen and all(torch.equal(s, held_out) for s in seen)
    assert not set(held_out.tolist()) & set(train_idx.tolist())
    curve = rec["val_curve"]
    key = (lambda c: c["loss"]) if metric == "loss" else (lambda c: (-c["top1"], c["loss"]))
    best = min(curve, key=key)
    assert rec["best_step"] == best["step"] > 0
    assert rec["val_after"] == {k: best[k] for k in ("loss", "top1", "count")}
    # it stopped at the 2nd evaluation (patience) without a lower validation loss, before the budget
    assert rec["stopped_early"] and curve[-1]["step"] == rec["steps_run"] < 40
    assert [c["step"] for c in curve if c["step"] > best["step"]] == [best["step"] + 4, best["step"] + 8]
    # the kept deltas are the best state's, not the last
    loader, _ = _val_loader(result.run_dir / "split.json", FAST["val_subset"])
    kept = evaluate(load_checkpoint(ws["mole"]).supernet, SUBNET, loader, read_specialized(result.run_dir).delta_source())
    assert abs(kept.loss - best["loss"]) < 1e-5 and key(best) < key(curve[-1])


class _Killed(Exception):
    pass


@requires_fmnist
def test_resume_after_a_kill_ends_in_the_state_of_an_uninterrupted_run(ws, tmp_path):
    whole = specialize(_config(ws, workdir=str(tmp_path / "a"), steps=14, eval_every=5, patience=0))

    def kill(event, info):
        if event == "step" and info["global_step"] == 8:  # after the checkpoint of step 5
            raise _Killed

    with pytest.raises(_Killed):
        specialize(_config(ws, workdir=str(tmp_path / "b"), steps=14, eval_every=5, patience=0), callback=kill)
    resumed = specialize(SpecializeConfig(workdir=str(tmp_path / "b"), threads=1, quiet=True), resume="latest")
    a, b = load_file(str(whole.deltas_path)), load_file(str(resumed.deltas_path))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda curve: [{k: v for k, v in c.items()} for c in curve]  # noqa: E731
    assert strip(whole.record["val_curve"]) == strip(resumed.record["val_curve"])
    assert resumed.record["steps_run"] == 14 and "resumed at step 5/14" in (resumed.run_dir / "log.txt").read_text()
    with pytest.raises(ValueError, match="already finished"):
        specialize(SpecializeConfig(workdir=str(tmp_path / "b"), threads=1), resume=str(resumed.run_dir))


# --------------------------------------------------------------------------- export
@requires_fmnist
def test_export_folds_the_specialized_deltas_exactly(ws, lora_run):
    from taslora_deploy.pipeline import ExportOptions, export
    from taslora_deploy.standalone import load_standalone

    opts = ExportOptions(onnx=True, latency_mode="off")
    lines: list[str] = []
    result = export(ws["root"] / "subnet.json", ws["mole"], workdir=ws["root"], options=opts, log=lines.append)
    report = result.report
    assert result.ok, result.failures
    assert report["source"]["specialized"]["run"] == str(lora_run.run_dir)  # the latest run of this subnet
    assert report["source"]["specialized"]["weights"] == "lora" and report["source"]["specialized"]["steps_run"] == 12
    assert result.fold_parity_max_diff is not None and result.fold_parity_max_diff <= 1e-5
    assert result.same_structure is True and report["zero_overhead_structure"]["identical"]
    assert "skipped" in report["unmerged_vs_folded"] and "unmerged_lora_branches" not in report["parity"]["max_abs_diff"]
    cert = json.loads((result.out / "certificate.json").read_text())
    assert cert["structure"]["identical"] and cert["parity"]["ok"]
    assert cert["model"]["specialized"]["run"] == str(lora_run.run_dir)
    assert json.loads((result.out / "config.json").read_text())["specialized"]["best_step"] == lora_run.record["best_step"]
    # the shipped model is the specialised subnet: its validation loss is the one specialize.json recorded
    loader, _ = _val_loader(lora_run.run_dir / "split.json", FAST["val_subset"])
    model = load_standalone(result.out).eval()
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(x), y, reduction="sum") for x, y in loader]
    assert abs(float(sum(losses)) / FAST["val_subset"] - lora_run.record["val_after"]["loss"]) < 1e-5
    # --no-specialize folds the experts instead
    plain = export(ws["root"] / "subnet.json", ws["mole"], workdir=ws["root"], log=lines.append,
                   options=ExportOptions(onnx=False, overhead=False, specialize=False))
    assert "specialized" not in plain.report["source"]
    assert not torch.equal(load_file(str(plain.out / "model.safetensors"))["blocks.0.fc1.weight"],
                           load_file(str(result.out / "model.safetensors"))["blocks.0.fc1.weight"])


@requires_fmnist
def test_export_picks_the_run_of_its_subnet_and_checkpoint(ws, lora_run, tmp_path):
    # newer, another subnet: member 1 of a Pareto front, through the command line
    space = SearchSpace.preset("fmnist")
    members = [ParetoMember.from_record({"subnet": s.to_dict(), "loss": 1.0 - 0.1 * i, "top1": 0.5, **measure(space, s)},
                                        ("loss", "flops"), "autoformer") for i, s in enumerate((SUBNET, OTHER))]
    pareto = write_pareto(tmp_path / "pareto.json", ParetoFront(("loss", "flops"), space, Constraints(), members,
                                                                ckpt=str(ws["mole"]), evaluations=2))
    made = _cli(ws, "--pareto", str(pareto), "--member", "1", "--steps", "2", "--val-subset", "256", "--threads", "1")
    assert made.exit_code == 0, made.output
    assert "specialized run written to" in made.stdout and "validation (256 held-out images)" in made.stdout
    other = read_specialized(find_specialized(ws["root"], OTHER, lora_run.record["source"]["sha256"]))
    assert other.record["subnet_source"] == f"member 1 of {pareto}" and other.record["steps_run"] == 2
    alone = specialize(_config(ws, ckpt=None, supernet=str(ws["supernet"]), steps=2))  # newer, same subnet
    assert alone.record["source"]["kind"] == "supernet" and alone.record["val_before"] != lora_run.record["val_before"]
    mole_sha = lora_run.record["source"]["sha256"]
    assert find_specialized(ws["root"], SUBNET, mole_sha) == lora_run.run_dir
    assert find_specialized(ws["root"], OTHER, mole_sha) == other.path
    assert find_specialized(ws["root"], SUBNET, alone.record["source"]["sha256"]) == alone.run_dir
    assert find_specialized(tmp_path, SUBNET, mole_sha) is None  # nothing in another workspace
    # a run of another subnet named explicitly: refused in one line
    result = runner.invoke(app, ["export", "--workdir", str(ws["root"]), "--subnet", str(ws["root"] / "subnet.json"),
                                 "--ckpt", str(ws["mole"]), "--specialized", str(other.path), "--latency-check", "off"])
    _one_line_exit_2(result, str(other.path), "--no-specialize")
    # --specialized alone exports that run's subnet from that run's checkpoint
    from taslora_deploy.pipeline import ExportOptions, export

    shipped = export(None, None, workdir=ws["root"], specialized=other.path, log=lambda _l: None,
                     options=ExportOptions(onnx=False, overhead=False))
    assert shipped.ok and shipped.report["source"]["subnet"] == OTHER.to_dict()
    assert shipped.report["source"]["specialized"]["run"] == str(other.path)


# --------------------------------------------------------------------------- bad input
def _one_line_exit_2(result, *names: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for name in names:
        assert name in " ".join(result.stderr.split()), result.stderr


def _cli(ws: dict[str, Path], *args: str):
    return runner.invoke(app, ["specialize", "--workdir", str(ws["root"]), "--quiet", *args])


@requires_fmnist
@pytest.mark.parametrize("case", ["outside-space", "other-space", "steps-0", "epochs-0", "both-budgets",
                                  "supernet-is-mole", "member-without-pareto", "bad-weights"])
def test_bad_input_exits_2_with_one_line(ws, case):
    mole = str(ws["mole"])
    subnet = json.dumps(SUBNET.to_dict())
    args, names = {
        "outside-space": (["--subnet", json.dumps({**SUBNET.to_dict(), "embed_dim": 72}), "--ckpt", mole],
                          ["outside search space", "embed_dim 72"]),
        "other-space": (["--subnet", json.dumps({"subnet": SUBNET.to_dict(),
                                                 "space": SearchSpace.preset("fmnist-wide").to_dict()}), "--ckpt", mole],
                        ["fmnist-wide"]),
        "steps-0": (["--subnet", subnet, "--ckpt", mole, "--steps", "0"], ["--steps", ">= 1"]),
        "epochs-0": (["--subnet", subnet, "--ckpt", mole, "--epochs", "-1"], ["--epochs"]),
        "both-budgets": (["--subnet", subnet, "--ckpt", mole, "--steps", "5", "--epochs", "1"], ["exclude"]),
        "supernet-is-mole": (["--subnet", subnet, "--supernet", mole], ["is a MoLE run", "--ckpt"]),
        "member-without-pareto": (["--subnet", subnet, "--member", "1"], ["--pareto"]),
        "bad-weights": (["--subnet", subnet, "--weights", "all"], ["--weights", "linear"]),
    }[case]
    before = set((ws["root"] / "specialized").glob("*"))
    _one_line_exit_2(_cli(ws, *args), *names)
    assert set((ws["root"] / "specialized").glob("*")) == before  # refused before a run folder was made


@requires_fmnist
def test_a_modified_or_foreign_run_is_refused(tmp_path):
    found = _save_workspace(tmp_path, random_mole("fmnist", expert_std=0.05))
    weights = found["mole"] / "mole.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    subnet = json.dumps(SUBNET.to_dict())
    _one_line_exit_2(_cli(found, "--subnet", subnet, "--ckpt", str(found["mole"]), "--steps", "2"),
                     "was modified", "--allow-modified")
    # another class count: a space of 5 classes on Fashion-MNIST's 10
    five = SearchSpace.from_dict({**SearchSpace.preset("fmnist").to_dict(), "num_classes": 5})
    other = _save_workspace(tmp_path / "five", random_mole(five, expert_std=0.05))
    _one_line_exit_2(_cli(other, "--subnet", subnet, "--ckpt", str(other["mole"]), "--steps", "2"),
                     "10 classes", "5")


@requires_fmnist
def test_early_stopping_waits_for_its_share_of_the_budget(ws, tmp_path):
    """With a learning rate that only hurts, patience 2 would stop at the 2nd evaluation; --patience-after 0.5 counts
    only the evaluations after half the budget (steps 24 and 28 of 40), so the run stops at step 28, and the
    starting state is still the one kept."""
    result = specialize(_config(ws, workdir=str(tmp_path), weights="linear", lr=3.0, min_lr=3.0, steps=40,
                                eval_every=4, patience=2, patience_after=0.5))
    rec = result.record
    assert rec["stopped_early"] and rec["steps_run"] == 28
    assert rec["best_step"] == 0 or rec["best_step"] < rec["steps_run"]
