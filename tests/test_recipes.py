"""Training recipes (`taslora train --recipe`): every recipe folds exactly, `paper` is today's training to the bit,
settings round-trip through mole.json, and the mechanisms do what they claim (MI term, sandwich, LoRA+, held
routing)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import requires_fmnist, run_cli
from taslora_core.mole import MoLEModel
from taslora_core.mole_io import load_mole, mole_recipe, read_mole_config, save_mole
from taslora_core.router import Router, RouterConfig, beta_for_mass, routing_mutual_information
from taslora_core.run_io import load_checkpoint
from taslora_core.search.fitness import CheckpointFitness
from taslora_core.slicing import LINEAR_LAYERS, LINEAR_PATHS, block_dims, weight
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, sample_subnet, smallest_subnet
from taslora_core.supernet import Supernet
from taslora_core.train import MoLETrainConfig
from taslora_core.train.loop import distill_loss, step_subnets, subnet_for_step
from taslora_core.train.mole_trainer import mole_config, recipe_record, recorded_config
from taslora_core.train.optim import mole_optimizers
from taslora_core.train.recipes import (DEFAULT_RECIPE, OPTIMISATION_SETTINGS, PAPER_SETTINGS, RECIPES, recipe_settings,
                                        resolve_recipe)
from taslora_deploy.fold import UnmergedMoLEViT, fold_subnet
from taslora_deploy.standalone import materialize

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_SUPERNET = ROOT / "benchmarks" / "reproduction" / "supernet"
SHIPPED_MOLE = ROOT / "benchmarks" / "reproduction" / "tas-lora-s0"  # written before recipes existed
TOLERANCE = 1e-5


def recipe_model(name: str, space: str = "fmnist", seed: int = 0, expert_std: float = 0.3) -> MoLEModel:
    """A MoLE model built as `taslora train --recipe name` builds it, on a fresh supernet, with experts (and a
    learned router's heads) redrawn so that routing and experts really change the model."""
    torch.manual_seed(seed)
    cfg = resolve_recipe(MoLETrainConfig(recipe=name))
    model = MoLEModel(Supernet(SearchSpace.preset(space)), mole_config(cfg))
    with torch.no_grad():
        for p in model.experts.parameters():  # deltas (alpha / r) U D of the same size whatever the recipe's alpha
            p.normal_(0, expert_std / math.sqrt(cfg.lora_alpha))
        if cfg.routing == "learned":
            model.router.head_weight.normal_(0, 0.5)
    return model.eval()


def _subnets(space: SearchSpace, n: int = 3, seed: int = 0) -> list[Subnet]:
    rng = random.Random(seed)
    return [largest_subnet(space), smallest_subnet(space)] + [sample_subnet(space, rng) for _ in range(n)]


@torch.no_grad()
def fold_gaps(model: MoLEModel, subnet: Subnet, x: torch.Tensor) -> dict[str, float]:
    """Max |logit difference| of the folded standalone model (the export's fold) against the MoLE forward and
    against the run-time LoRA branches."""
    folded = fold_subnet(model.supernet, subnet, model).model.eval()
    out = folded(x)
    return {"mole": (out - model(x, subnet)).abs().max().item(),
            "unmerged": (out - UnmergedMoLEViT(model.supernet, subnet, model)(x)).abs().max().item()}


# ---------------------------------------------------------------------- exact fold
@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_folds_exactly(name: str) -> None:
    model = recipe_model(name)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for sn in _subnets(model.space):
        with torch.no_grad():
            # the experts really change the model (else an exact fold would prove nothing)
            base = model(x, sn, use_experts=False)
            assert (model(x, sn) - base).abs().max() > 0.1 * base.abs().max()
            # the search's path (router once, then the experts' merge) equals deltas()
            direct, routed = model.deltas(sn), model.experts.deltas(sn, model.routing(sn))
            assert all(torch.equal(direct[k], routed[k]) for k in direct)
            sliced = model.supernet.subnet_tensors(sn)  # deltas keep the sliced weights' shapes
            assert all(v.shape == sliced[f"blocks.{b}.{LINEAR_PATHS[layer]}.weight"].shape
                       for (b, layer), v in direct.items())
        gaps = fold_gaps(model, sn, x)
        assert max(gaps.values()) <= TOLERANCE, (name, sn, gaps)


@pytest.mark.parametrize("name", ["paper", "factorised", "group-hard"])
def test_fold_check_fails_when_the_fold_is_not_exact(name: str) -> None:
    """The fold check above catches a fold that misses part of the experts: fold from a model whose U of one
    part the subnet uses is changed after folding, or from the shared part only (the factor parts dropped)."""
    model = recipe_model(name)
    sn = _subnets(model.space)[2]
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    folded = fold_subnet(model.supernet, sn, model).model.eval()
    with torch.no_grad():
        u = model.experts.blocks[0]["qkv_U"]
        routing = model.routing(sn)[0, 0]
        used = int(routing.argmax())  # a part block 0's qkv really uses
        u[:, used * model.experts.rank:(used + 1) * model.experts.rank] += 0.05
        gap = (folded(x) - model(x, sn)).abs().max().item()
    assert gap > 100 * TOLERANCE, gap
    if name == "factorised":  # a fold that keeps only the shared part of the factorised experts
        with torch.no_grad():
            shared_only = torch.zeros_like(model.routing(sn))
            shared_only[..., 0] = 1.0
            wrong = materialize(model.supernet, sn, model.experts.deltas(sn, shared_only)).eval()
            assert (wrong(x) - model(x, sn)).abs().max().item() > 100 * TOLERANCE


def test_factorised_parts_follow_the_layer_factors() -> None:
    """Each (block, layer) uses the shared part, the part of its heads (qkv/proj) or MLP ratio (fc1/fc2) and the
    part of the subnet's embed dim; the merge equals (alpha/r) (U_0 + U_f + U_e) D with the one shared D."""
    model = recipe_model("factorised")
    s = model.space
    last = len(s.mlp_ratios) - 1
    sn = Subnet(embed_dim=s.embed_dims[1], depth=max(s.depths), num_heads=(s.num_heads[0],) * max(s.depths),
                mlp_ratios=(s.mlp_ratios[last],) * max(s.depths))
    w = model.routing(sn)
    first = 1 + max(len(s.num_heads), len(s.mlp_ratios))
    for i, layer in enumerate(LINEAR_LAYERS):
        factor = 1 + (0 if layer in ("qkv", "proj") else last)  # the first heads value, the last MLP ratio
        assert w[0, i].nonzero().flatten().tolist() == [0, factor, first + 1]
    r = model.experts.rank
    with torch.no_grad():
        deltas = model.deltas(sn)
        for layer_idx, layer in enumerate(LINEAR_LAYERS):
            u, d = model.experts.blocks[0][f"{layer}_U"], model.experts.blocks[0][f"{layer}_D"]
            assert d.shape[0] == r  # the down-projection is shared
            cols = w[0, layer_idx].nonzero().flatten().tolist()
            full = sum(u[:, c * r:(c + 1) * r] for c in cols) @ d * model.experts.scale
            want = weight(layer, full, block_dims(s, sn, 0))
            torch.testing.assert_close(deltas[(0, layer)], want, rtol=1e-4, atol=1e-4)


def test_fresh_model_of_every_recipe_equals_the_frozen_supernet() -> None:
    x = torch.randn(3, 1, 28, 28)
    for name in RECIPES:
        torch.manual_seed(0)
        model = MoLEModel(Supernet(SearchSpace.preset("fmnist")), mole_config(resolve_recipe(MoLETrainConfig(recipe=name)))).eval()
        sn = _subnets(model.space)[2]
        with torch.no_grad():
            assert torch.equal(model(x, sn), model.supernet(x, sn)), name


# ---------------------------------------------------------------------- routing held group-wise, MI
def test_init_mass_sets_beta_from_k() -> None:
    space = SearchSpace.preset("fmnist-wide")
    k = len(space.groups())
    assert k == 27 and beta_for_mass(0.9, k) == pytest.approx(math.log(0.9 * 26 / 0.1)) == pytest.approx(5.455, abs=1e-3)
    model = recipe_model("group-p90", space="fmnist-wide", expert_std=0.0)
    torch.manual_seed(0)
    fresh = MoLEModel(Supernet(space), mole_config(resolve_recipe(MoLETrainConfig(recipe="group-p90"))))
    for sn in _subnets(space):
        probs = fresh.routing(sn)
        own = probs[torch.arange(sn.depth), :, torch.tensor(fresh.router.block_groups(sn))]
        assert torch.allclose(own, torch.full_like(own, 0.9), atol=2e-3)
    assert model.config.router.init_mass == 0.9


def test_hard_routing_is_one_hot_on_the_group() -> None:
    model = recipe_model("group-hard")
    for sn in _subnets(model.space):
        probs = model.routing(sn)
        groups = torch.tensor(model.router.block_groups(sn))
        assert torch.equal(probs, torch.nn.functional.one_hot(groups, model.num_experts).float()[:, None].expand_as(probs))


def test_mutual_information_is_zero_for_uniform_and_positive_for_group_wise_routing() -> None:
    space = SearchSpace.preset("fmnist")
    k = len(space.groups())
    torch.manual_seed(0)
    uniform = Router(space, k, RouterConfig(init="random", random_init_std=0.0))
    group = Router(space, k, RouterConfig(init="group"))
    subnets = _subnets(space, 6)
    groups = torch.tensor([g for sn in subnets for g in group.block_groups(sn)])
    assert len(set(groups.tolist())) > 3
    with torch.no_grad():
        mi_uniform = routing_mutual_information(torch.cat([uniform(sn) for sn in subnets]), groups, k)
        mi_group = routing_mutual_information(torch.cat([group(sn) for sn in subnets]), groups, k)
        hard = torch.nn.functional.one_hot(groups, k).float()[:, None].expand(-1, 4, -1)
    assert abs(mi_uniform.item()) < 1e-6
    assert mi_group.item() > 0.1
    share = torch.bincount(groups).float() / len(groups)
    h_groups = -(share[share > 0] * share[share > 0].log()).sum()  # one-hot group routing: I = H(G)
    assert routing_mutual_information(hard, groups, k).item() == pytest.approx(h_groups.item(), abs=1e-5)
    # the MI term's gradient reaches the router
    group.zero_grad()
    routing_mutual_information(torch.cat([group(sn) for sn in subnets]), groups, k).backward()
    assert group.head_bias.grad is not None and group.head_bias.grad.abs().sum() > 0


# ---------------------------------------------------------------------- sandwich, distillation, LoRA+
def test_sandwich_visits_smallest_and_largest_every_step_and_keeps_the_subnet_sequence() -> None:
    space = SearchSpace.preset("fmnist")
    for epoch in range(2):
        for step in range(20):
            uniform = step_subnets(space, 0, epoch, step, "uniform")
            sandwich = step_subnets(space, 0, epoch, step, "sandwich", 2)
            assert uniform == [subnet_for_step(space, 0, epoch, step)]
            assert sandwich[0] == largest_subnet(space) and sandwich[1] == smallest_subnet(space)
            assert sandwich[2] == uniform[0] and len(sandwich) == 4  # every recipe sees the same subnet sequence
            assert step_subnets(space, 0, epoch, step, "sandwich", 1) == sandwich[:3]


def test_distill_loss_is_zero_on_the_teacher_and_positive_elsewhere() -> None:
    teacher = torch.randn(8, 10)
    assert distill_loss(teacher, teacher).abs().item() < 1e-6
    assert distill_loss(torch.randn(8, 10), teacher).item() > 0.01


def test_lora_plus_gives_the_up_projections_16x_the_learning_rate() -> None:
    model = recipe_model("lora-plus", expert_std=0.0)
    cfg = resolve_recipe(MoLETrainConfig(recipe="lora-plus"))
    optim = mole_optimizers(model.experts, model.router, 100, 10, expert_lr=5e-3, lora_plus=cfg.lora_plus)
    opt = optim.items[0].optimizer
    down, up = opt.param_groups
    assert {id(p) for p in up["params"]} == {id(p) for p in model.experts.up_params()}
    assert {id(p) for p in down["params"]} == {id(p) for p in model.experts.down_params()}
    for step in (0, 5, 10, 50, 99):
        optim.prepare(step)
        assert up["lr"] == pytest.approx(16 * down["lr"], rel=1e-12), step
    optim.prepare(10)
    assert down["lr"] == pytest.approx(5e-3) and optim.lrs()["experts"] == pytest.approx(5e-3)
    paper = mole_optimizers(model.experts, model.router, 100, 10, expert_lr=5e-3)
    assert len(paper.items[0].optimizer.param_groups) == 1  # the paper: one group, as before recipes


# ---------------------------------------------------------------------- settings and records
def test_recipes_fill_only_unset_settings_and_refuse_bad_combinations() -> None:
    assert recipe_settings("paper") == PAPER_SETTINGS
    cfg = resolve_recipe(MoLETrainConfig(recipe="sandwich", sandwich_random=3, distill=False))
    assert (cfg.sampling, cfg.sandwich_random, cfg.distill) == ("sandwich", 3, False)
    assert resolve_recipe(cfg) == cfg  # resolving a resolved config changes nothing (resume)
    with pytest.raises(ValueError, match="unknown --recipe 'bogus'; choose one of paper, "):
        resolve_recipe(MoLETrainConfig(recipe="bogus"))
    with pytest.raises(ValueError, match="--routing frozen"):
        resolve_recipe(MoLETrainConfig(recipe="factorised", routing="learned"))
    with pytest.raises(ValueError, match="--mi-weight"):
        resolve_recipe(MoLETrainConfig(recipe="group-hard", mi_weight=0.1))
    winner = resolve_recipe(MoLETrainConfig(recipe="sandwich-lora-plus"))  # carries its measured optimisation
    assert (winner.expert_lr, winner.lora_alpha, winner.router_lr, winner.lora_plus) == (1e-3, 16.0, 1.0, 16.0)
    assert resolve_recipe(MoLETrainConfig(recipe="sandwich-lora-plus", expert_lr=2e-3)).expert_lr == 2e-3
    paper = resolve_recipe(MoLETrainConfig(recipe="paper"))
    assert (paper.expert_lr, paper.lora_alpha, paper.router_lr) == (5e-4, 1.0, 0.1)  # the paper's, as before
    assert resolve_recipe(MoLETrainConfig()).recipe == DEFAULT_RECIPE  # no --recipe: the default, named
    for baseline in ("single-lora", "finetune"):  # the baselines keep the paper's recipe whatever the default
        assert resolve_recipe(MoLETrainConfig(mode=baseline)).recipe == "paper"
    with pytest.raises(ValueError, match="--expert-lr must be > 0"):
        resolve_recipe(MoLETrainConfig(expert_lr=0.0))
    # a resumed run of a version before recipes (no "recipe" recorded) goes on with the paper's recipe
    old_run = {k: v for k, v in MoLETrainConfig(recipe="paper", expert_lr=5e-3).to_dict().items() if k != "recipe"}
    assert resolve_recipe(recorded_config(old_run)).recipe == "paper"
    assert recorded_config({**old_run, "recipe": "sandwich"}).recipe == "sandwich"


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_round_trips_through_mole_json(name: str, tmp_path: Path) -> None:
    model = recipe_model(name)
    cfg = resolve_recipe(MoLETrainConfig(recipe=name))
    save_mole(tmp_path, model, extra={"recipe": recipe_record(cfg)})
    meta = read_mole_config(tmp_path)
    assert mole_recipe(meta) == {"name": name, "settings": recipe_settings(name)}
    loaded = load_mole(tmp_path, model.supernet).eval()
    assert loaded.config == model.config and type(loaded.experts) is type(model.experts)
    x = torch.randn(2, 1, 28, 28)
    sn = _subnets(model.space)[3]
    with torch.no_grad():
        assert torch.equal(loaded(x, sn), model(x, sn))


def test_a_mole_json_without_a_recipe_loads_as_paper() -> None:
    meta = read_mole_config(SHIPPED_MOLE)
    assert "recipe" not in meta and "structure" not in meta["config"]
    structural = {k: v for k, v in PAPER_SETTINGS.items() if k not in OPTIMISATION_SETTINGS}
    assert mole_recipe(meta) == {"name": "paper", "settings": structural}  # its LRs are in its train_config.json
    loaded = load_checkpoint(SHIPPED_MOLE)
    assert loaded.mole.config.structure == "mixture" and not loaded.mole.config.router.hard


def test_cli_unknown_recipe_exits_2_with_one_line_listing_the_choices(tmp_path: Path) -> None:
    res = run_cli(["train", "--recipe", "bogus", "--workdir", tmp_path])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown --recipe 'bogus'"), res.stderr
    assert all(name in lines[0] for name in RECIPES)


# ---------------------------------------------------------------------- training runs
# The paper recipe's per-step training losses, recorded with the code as it was before recipes existed
# (`taslora train` on the shipped narrow supernet, 256 images, batch 32, 2 epochs, warm-up 1, alpha 16, expert LR
# 5e-3, router LR 1; CPU, torch 1 thread). The runs after this change gave the same losses to the bit and the same
# mole.safetensors sha256 (37e4b609... / a891d8b6... for the default and these settings).
PAPER_LOSSES = [0.8262372612953186, 0.6815572381019592, 0.6443041563034058, 0.7230694890022278, 0.6816447377204895,
                0.7082756757736206, 0.586736798286438, 0.6427337527275085, 0.6401386857032776, 0.6452946066856384,
                0.8123652338981628, 0.6736460328102112, 0.7038555145263672, 0.7235107421875, 0.7026430368423462,
                0.7048639059066772]
EXPLICIT_OPTIMISATION = {"lora_alpha": 16.0, "expert_lr": 5e-3, "router_lr": 1.0}  # the options the runs below pass
TINY_RUN = ["--supernet", SHIPPED_SUPERNET, "--train-subset", "256", "--batch-size", "32", "--val-subset", "64",
            "--summary-subnets", "0", "--log-every", "1", "--threads", "1", "--quiet"]


def _train(tmp_path: Path, *args) -> Path:
    res = run_cli(["train", *TINY_RUN, *args, "--workdir", tmp_path])
    assert res.exit_code == 0, res.output
    (run,) = [p for p in (tmp_path / "mole").iterdir() if p.is_dir()]
    return run


def _step_losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "step"]


@requires_fmnist
def test_paper_recipe_reproduces_the_training_before_recipes(tmp_path: Path) -> None:
    run = _train(tmp_path, "--recipe", "paper", "--epochs", "2", "--warmup-epochs", "1", "--lora-alpha", "16",
                 "--expert-lr", "5e-3", "--router-lr", "1.0")
    assert _step_losses(run) == pytest.approx(PAPER_LOSSES, rel=1e-5, abs=1e-6)
    meta = read_mole_config(run)
    assert meta["recipe"] == {"name": "paper", "settings": {**PAPER_SETTINGS, **EXPLICIT_OPTIMISATION}}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["forward_passes"] == summary["backward_passes"] == summary["global_steps"] == 16


@requires_fmnist
@pytest.mark.parametrize("name", [n for n in RECIPES if n != "paper"])
def test_every_recipe_trains_records_itself_and_folds_exactly(name: str, tmp_path: Path) -> None:
    run = _train(tmp_path, "--recipe", name, "--epochs", "2", "--warmup-epochs", "1", "--lora-alpha", "16",
                 "--expert-lr", "5e-3", "--router-lr", "1.0", "--train-subset", "128")
    meta = read_mole_config(run)
    assert mole_recipe(meta) == {"name": name, "settings": {**recipe_settings(name), **EXPLICIT_OPTIMISATION}}
    assert json.loads((run / "train_config.json").read_text())["config"]["recipe"] == name
    summary = json.loads((run / "summary.json").read_text())
    steps = summary["global_steps"]
    per_step = 3 if recipe_settings(name)["sampling"] == "sandwich" else 1  # largest + smallest + 1 random
    assert summary["forward_passes"] == summary["backward_passes"] == per_step * steps
    loaded = load_checkpoint(run)
    model = loaded.mole.eval()
    cfg = resolve_recipe(MoLETrainConfig(recipe=name))
    torch.manual_seed(0)  # the router as `taslora train --seed 0` built it
    init = MoLEModel(loaded.supernet, model.config)
    moved = {k: (v - init.state_dict()[k]).abs().max().item() for k, v in model.trainable_state().items()}
    router_moved = max((v for k, v in moved.items() if k.startswith("router.")), default=0.0)
    if cfg.routing == "learned":
        assert router_moved > 0, name
    else:
        assert router_moved == 0.0, name  # frozen, hard and factor routing never train
    assert max(v for k, v in moved.items() if k.endswith("_U")) > 0
    if name == "mi":
        assert all("routing_mi" in r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                   if r["type"] == "step")
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    for sn in _subnets(model.space, 2):
        assert max(fold_gaps(model, sn, x).values()) <= TOLERANCE
    fitness = CheckpointFitness(loaded, [(x, torch.zeros(4, dtype=torch.long))])  # the search's evaluation
    assert math.isfinite(fitness(_subnets(model.space)[2])["loss"])


@requires_fmnist
def test_factorised_recipe_end_to_end_train_search_export_verify(tmp_path: Path) -> None:
    run = _train(tmp_path, "--recipe", "factorised", "--epochs", "1", "--warmup-epochs", "0", "--expert-lr", "1e-2",
                 "--train-subset", "128")
    best = tmp_path / "best.json"
    res = run_cli(["search", "--ckpt", run, "--population", "4", "--iterations", "1", "--parents", "2",
                   "--val-subset", "64", "--flops", "100M", "--workdir", tmp_path, "--out", best])
    assert res.exit_code == 0, res.output
    out = tmp_path / "export"
    res = run_cli(["export", "--ckpt", run, "--subnet", best, "--out", out, "--onnx", "--latency-check", "report",
                   "--latency-iters", "20", "--latency-time-s", "0.3", "--latency-batches", "1",
                   "--workdir", tmp_path])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["unmerged_vs_folded"]["ok"] is True and report["zero_overhead_structure"]["ok"] is True
    assert max(v for r in report["parity"]["max_abs_diff"].values() for v in r.values()) <= TOLERANCE
    res = run_cli(["verify", out])
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------- the screening driver's bookkeeping
def _driver():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipes_driver", ROOT / "benchmarks" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_screen_variants_ranking_and_best_arms(tmp_path: Path) -> None:
    drv = _driver()
    args = drv.parse_args(["screen", "--results", str(tmp_path), "--runs", str(tmp_path / "runs"), "--lrs", "5e-3", "1e-3"])
    chosen = drv.variants(args, ["paper", "group-hard"])
    assert chosen == {"paper": ("paper", 5e-3), "group-hard": ("group-hard", 5e-3),
                      "paper-lr0.001": ("paper", 1e-3), "group-hard-lr0.001": ("group-hard", 1e-3)}
    assert drv.parse_variant("group-hard-lr0.001", args) == ("group-hard", 1e-3)
    with pytest.raises(SystemExit, match="unknown arm"):
        drv.parse_variant("no-such-arm", args)
    drv.register(chosen, [1], args)  # the arm's options win over the shared ones: they come last
    assert drv.R.METHODS["group-hard-lr0.001-1x"] == ("mole", ["--expert-lr", "0.001", "--recipe", "group-hard"])
    drv.register({"lora-plus-centred": ("lora-plus-centred", 5e-3)}, [1], args)  # D at LR/4, U at 16 x that
    assert drv.R.METHODS["lora-plus-centred-1x"][1] == ["--expert-lr", "0.005", "--recipe", "lora-plus",
                                                         "--expert-lr", "0.00125"]
    store = drv.R.Store(tmp_path)
    for key, arm, gain in [("paper-1x", "paper", 0.5), ("group-hard-1x", "group-hard", None),
                           ("factorised-1x", "factorised", 0.1), ("sandwich-1x", "sandwich", 0.3),
                           ("mi-1x", "mi", -0.2)]:
        rec = {"stage": "screen", "key": key, "arm": arm, "variant": key[:-3], "budget": 1, "hp": {"expert_lr": 5e-3}}
        store.add({**rec, "gains": {"panel_mean": [gain, gain - 0.1, gain + 0.1]}} if gain is not None
                  else {**rec, "diverged": True})
    assert [r["key"] for r in drv.ranked(store, 1)] == ["paper-1x", "sandwich-1x", "factorised-1x", "mi-1x",
                                                          "group-hard-1x"]
    assert drv.best_arms(store, 1) == ["sandwich", "factorised"]  # paper is the reference, diverged runs never
    args.best_lr_of = 1
    assert drv.variants(args, ["group-hard", "sandwich"], store) == {"sandwich": ("sandwich", 5e-3)}
    # a pass is a subnet's forward/backward over one batch: an arm's own --batch-size (the last one) is what it costs
    drv.register({"sandwich-lora-plus-b64": ("sandwich-lora-plus-b64", 1e-3)}, [3], args)
    half = drv.R.METHODS["sandwich-lora-plus-b64-3x"][1]
    assert half[-2:] == ["--batch-size", "64"]
    assert drv._passes({"forward_passes": 16848, "options": half}, args) == "16848 x 64"
    assert drv._passes({"forward_passes": 8424, "options": ["--recipe", "sandwich"]}, args) == "8424 x 128"


def test_ranking_subnets_stay_under_the_bound_and_kendall_follows_the_order(tmp_path: Path) -> None:
    from taslora_core.complexity import flops, parse_amount

    drv = _driver()
    space = SearchSpace.preset("fmnist")
    args = drv.parse_args(["ranking", "--results", str(tmp_path), "--runs", str(tmp_path / "runs"), "--flops", "5M",
                           "--random-subnets", "8"])
    subnets = drv.ranking_subnets(args, space)
    assert len(subnets) == 8 and len({sn.key() for sn in subnets}) == 8
    assert all(flops(space, sn) <= parse_amount("5M") for sn in subnets)
    assert max(flops(space, sn) for sn in sample_distinct_all(space)) > parse_amount("5M")  # the bound bites
    truth = np.arange(10, dtype=float)
    assert drv.kendall(truth * 2 + 1, truth, resamples=200) == pytest.approx([1.0, 1.0, 1.0])
    tau, lo, hi = drv.kendall(-truth, truth, resamples=200)
    assert tau == pytest.approx(-1.0) and hi == pytest.approx(-1.0)
    noisy = truth + np.random.default_rng(0).normal(0, 3, 10)
    tau, lo, hi = drv.kendall(noisy, truth, resamples=500)
    assert -1.0 < lo < tau < hi <= 1.0


def sample_distinct_all(space: SearchSpace) -> list[Subnet]:
    return [sample_subnet(space, random.Random(i)) for i in range(50)]
