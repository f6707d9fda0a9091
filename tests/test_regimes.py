"""The headroom regimes: the `fmnist-wide` space preset, and the bookkeeping of benchmarks/reproduction.py and
benchmarks/headroom_map.py (stage resume, the headroom summary, the capture ratio, the map)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from taslora_core import flops, params
from taslora_core.data import DataConfig
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, smallest_subnet
from taslora_core.supernet import Supernet

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------- the wide space
def test_wide_space_widens_fmnist_downwards_with_the_same_largest_subnet() -> None:
    narrow, wide = SearchSpace.preset("fmnist"), SearchSpace.preset("fmnist-wide")
    assert len(wide.groups()) == 27 and len(narrow.groups()) == 12
    assert (wide.embed_dims, wide.depths, wide.num_heads, wide.mlp_ratios) == (
        (32, 64, 96), (2, 3, 4, 5, 6), (1, 2, 3), (1.0, 2.0, 3.0))
    # same largest subnet and same allocated supernet: an epoch costs no more, weights have the same shapes
    assert largest_subnet(wide) == largest_subnet(narrow)
    shapes = lambda space: {k: tuple(v.shape) for k, v in Supernet(space).state_dict().items()}  # noqa: E731
    assert shapes(wide) == shapes(narrow)
    # ... and every narrow subnet is a wide subnet: the wide space contains the narrow one
    assert set(narrow.embed_dims) <= set(wide.embed_dims) | {80}
    small_w, small_n = smallest_subnet(wide), smallest_subnet(narrow)
    assert flops(wide, largest_subnet(wide)) / flops(wide, small_w) > 20
    assert flops(narrow, largest_subnet(narrow)) / flops(narrow, small_n) < 5
    assert params(wide, small_w) < params(narrow, small_n) / 4


def test_wide_space_round_trips_through_yaml(tmp_path: Path) -> None:
    wide = SearchSpace.preset("fmnist-wide")
    wide.to_yaml(tmp_path / "wide.yaml")
    assert SearchSpace.resolve(tmp_path / "wide.yaml") == wide
    assert SearchSpace.resolve("FMNIST-WIDE") == wide


def test_wide_space_smallest_subnet_runs_in_the_supernet() -> None:
    import torch

    wide = SearchSpace.preset("fmnist-wide")
    supernet = Supernet(wide).eval()
    sn = smallest_subnet(wide)
    assert (sn.embed_dim, sn.depth, sn.num_heads, sn.mlp_ratios) == (32, 2, (1, 1), (1.0, 1.0))
    with torch.no_grad():
        assert supernet(torch.zeros(2, 1, 28, 28), sn).shape == (2, 10)


# ---------------------------------------------------------------------- reproduction bookkeeping
def _correct(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    return (rng.random(n) < p).astype(np.uint8)


def _fake_store(tmp_path: Path, method_gain: float, room: float, n: int = 4000):
    """A store with a headroom of `room` and a method that recovers `method_gain` (fractions of images) on every
    headroom subnet, seeds 0 and 1."""
    rep = _load("reproduction")
    store = rep.Store(tmp_path)
    rng = np.random.default_rng(0)
    targets = list(rep.HEADROOM_TARGETS)
    base = np.stack([_correct(rng, n, 0.8) for _ in targets])

    def improved(frac: float, seed: int) -> np.ndarray:
        out = base.copy()
        flip = np.random.default_rng(100 + seed).random(base.shape) < frac / 0.2  # wrong images fixed with prob
        out[(base == 0) & flip] = 1
        return out

    after = improved(room, 99)
    for i, name in enumerate(targets):
        store.add({"stage": "headroom", "key": name, "subnet": {}, "top1_before": float(base[i].mean()),
                   "top1_after": float(after[i].mean()), "seconds": 10.0},
                  {"correct_before": base[i], "correct_after": after[i]})
    for seed in (0, 1):
        for method, arr in (("supernet", base), ("tas-lora", improved(method_gain, seed))):
            store.add({"stage": "ablation", "key": f"{method}-s{seed}", "method": method, "seed": seed,
                       "headroom_targets": targets, "seconds": 5.0},
                      {"headroom_correct": arr, "searched_correct": arr[0], "random_correct": arr[2:],
                       "random_loss": np.zeros((2, n), np.float16)})
    return rep, store


def test_capture_ratio_measures_the_share_of_headroom_recovered(tmp_path: Path) -> None:
    rep, store = _fake_store(tmp_path, method_gain=0.03, room=0.06)
    full = rep.capture(store, [0, 1])
    cap = full["tas-lora"]
    assert [row["subnet"] for row in cap] == list(rep.HEADROOM_TARGETS)
    for row in cap:
        assert row["headroom_resolved"]
        assert 4.0 < row["headroom_points"] < 8.0 and 2.0 < row["gain_points"] < 4.0
        assert 0.3 < row["capture_ratio"] < 0.7  # about half of the headroom
        assert row["capture_ci"][0] < row["capture_ratio"] < row["capture_ci"][1]
        assert row["gain_points"] / row["headroom_points"] == pytest.approx(row["capture_ratio"])
    text = rep.capture_markdown(full)
    assert "(e) TAS-LoRA" in text and "(f) headroom" in text


def test_capture_ratio_is_not_claimed_without_resolved_headroom(tmp_path: Path) -> None:
    rep, store = _fake_store(tmp_path, method_gain=0.0, room=0.0)
    full = rep.capture(store, [0, 1])
    for row in full["tas-lora"]:
        assert row["headroom_resolved"] is False and row["gain_points"] == 0.0 and "capture_ratio" not in row
    assert "(0." not in rep.capture_markdown(full)  # no ratio printed


def test_headroom_summary_pools_subnets_with_per_subnet_intervals(tmp_path: Path) -> None:
    rep, store = _fake_store(tmp_path, method_gain=0.0, room=0.04)
    head = rep.headroom_summary(store)
    assert [s["name"] for s in head["subnets"]] == list(rep.HEADROOM_TARGETS)
    assert head["ci"][0] < head["gain_points"] < head["ci"][1]
    assert head["gain_points"] == pytest.approx(np.mean([s["gain_points"] for s in head["subnets"]]))
    assert head["seconds"] == 40.0


def test_store_skips_finished_cells_on_a_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The headroom stage fine-tunes only the targets that have no record yet (what a killed run resumes)."""
    rep = _load("reproduction")
    store = rep.Store(tmp_path)
    space = SearchSpace.preset("fmnist")
    targets = [(name, smallest_subnet(space)) for name in rep.HEADROOM_TARGETS]
    tuned: list[str] = []

    class Loaded:
        supernet = Supernet(space)

    monkeypatch.setattr(rep, "load_checkpoint", lambda path: Loaded())
    monkeypatch.setattr(rep, "test_batches", lambda n=None: None)
    monkeypatch.setattr(rep, "headroom_targets", lambda args, base: targets)
    monkeypatch.setattr(rep, "per_image", lambda *a, **k: (np.zeros(4, np.uint8), np.zeros(4, np.float32)))
    monkeypatch.setattr(rep, "model_per_image", lambda m, b: (np.ones(4, np.uint8), np.zeros(4, np.float32)))
    monkeypatch.setattr(rep, "materialize", lambda sup, sn: None)
    monkeypatch.setattr(rep, "finetune_standalone", lambda *a, **k: tuned.append("x"))
    args = rep.parse_args(["headroom", "--out", str(tmp_path), "--epochs", "1"])
    args.supernet = tmp_path
    store.add({"stage": "headroom", "key": "searched", "subnet": {}, "top1_before": 0, "top1_after": 1, "seconds": 1},
              {"correct_before": np.zeros(4, np.uint8), "correct_after": np.ones(4, np.uint8)})
    rep.stage_headroom(args, store)
    assert len(tuned) == 3  # searched was already done
    rep.stage_headroom(args, store)
    assert len(tuned) == 3  # nothing left to do
    assert [r["key"] for r in store.records("headroom")] == list(rep.HEADROOM_TARGETS)


def test_supernet_stage_resumes_a_killed_run_and_reuses_a_finished_one(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rep = _load("reproduction")
    calls: list[list[str]] = []
    run = tmp_path / "workspace" / "supernets" / "20260101-000000-supernet"

    def fake_command(title: str, argv: list[str]) -> None:
        calls.append(argv)
        run.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "space.json", "supernet.safetensors"):
            (run / name).write_text("{}")

    monkeypatch.setattr(rep, "run_command", fake_command)
    args = rep.parse_args(["supernet", "--out", str(tmp_path), "--space", "fmnist-wide", "--train-subset", "10000",
                           "--supernet-epochs", "120"])
    store = rep.Store(tmp_path)
    # a killed run: folder with a training state but no summary -> resumed, not restarted
    run.mkdir(parents=True)
    (run / "train_state.pt").write_bytes(b"state")
    assert rep.stage_supernet(args, store) == run
    assert calls[-1][:4] == ["supernet", "train", "--resume", str(run)]
    # finished: reused without training
    assert rep.stage_supernet(args, store) == run and len(calls) == 1
    # nothing there: a new run with the regime's space, data subset and epochs
    for p in run.iterdir():
        p.unlink()
    run.rmdir()
    rep.stage_supernet(args, store)
    argv = calls[-1]
    assert argv[argv.index("--space") + 1] == "fmnist-wide"
    assert argv[argv.index("--train-subset") + 1] == "10000" and argv[argv.index("--epochs") + 1] == "120"


def test_a_killed_method_run_is_resumed_not_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell's training killed after a checkpoint continues from it (`train --resume`), a finished one is reused,
    and only a name without either starts a new run."""
    rep = _load("reproduction")
    workdir = tmp_path / "workspace"
    calls: list[list[str]] = []
    killed = workdir / "mole" / "20260101-000000-abl-paper-30x-s0"
    other = workdir / "mole" / "20260101-000001-abl-paper-3x-s0"  # another cell's killed run: not this one's

    def fake_command(title: str, argv: list[str]) -> None:
        calls.append(argv)
        run = Path(argv[argv.index("--resume") + 1]) if "--resume" in argv else workdir / "mole" / "20260102-000000-abl-new-s0"
        run.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "mole.json", "mole.safetensors"):
            (run / name).write_text("{}")

    monkeypatch.setattr(rep, "run_command", fake_command)
    args = rep.parse_args(["ablation", "--out", str(tmp_path), "--epochs", "3"])
    for run in (killed, other):
        run.mkdir(parents=True)
        (run / "train_state.pt").write_bytes(b"state")
    hp = {"alpha": 16, "router_lr": 1e-3, "warmup": 1}
    assert rep._train(args, workdir, "tas-lora", 0, "abl-paper-30x-s0", hp) == killed
    assert calls[-1] == ["train", "--resume", str(killed), "--workdir", str(workdir), "--quiet"]
    assert rep._train(args, workdir, "tas-lora", 0, "abl-paper-30x-s0", hp) == killed and len(calls) == 1
    rep._train(args, workdir, "tas-lora", 0, "abl-new-s0", hp)
    assert "--resume" not in calls[-1] and calls[-1][calls[-1].index("--name") + 1] == "abl-new-s0"


def test_headroom_map_rows_come_from_each_regimes_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hm = _load("headroom_map")
    monkeypatch.setattr(hm, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(hm, "RESULTS", tmp_path / "results")
    regime = hm.Regime("wide-10k", "fmnist-wide", 10000, 120, "test")
    assert hm.regime_row(regime) is None  # nothing measured yet
    regime.out.mkdir(parents=True)
    report = {"headroom_summary": {"gain_points": 1.5, "ci": [1.0, 2.0], "seconds": 60,
                                   "subnets": [{"name": n, "gain_points": g} for n, g in
                                               [("searched", 0.5), ("smallest", 4.0), ("random0", 1.0), ("random1", 0.5)]]},
              "convergence_gate": {"finetune_gain_points": 0.3, "ci": [0.1, 0.5]},
              "cost": {"supernet": 600.0, "headroom": 60.0, "gate": 120.0}}
    (regime.out / "report.json").write_text(json.dumps(report))
    rows = hm.write_map([regime])
    assert rows[0]["headroom"]["gain_points"] == 1.5 and rows[0]["train_images"] == 10000
    text = (tmp_path / "results" / "map.md").read_text()
    assert "**+1.50** [+1.00, +2.00]" in text and "+4.00" in text and "NOT met" in text
    assert json.loads((tmp_path / "results" / "map.json").read_text())[0]["regime"] == "wide-10k"
    # on a new machine (no runs), a regime measured elsewhere keeps its stored row and a new one is added
    (regime.out / "report.json").unlink()
    other = hm.Regime("wide", "fmnist-wide", None, 60, "test")
    other.out.mkdir(parents=True)
    (other.out / "report.json").write_text(json.dumps({**report, "headroom_summary": {**report["headroom_summary"],
                                                                                      "gain_points": 0.9}}))
    rows = hm.write_map([regime, other, hm.Regime("narrow", "fmnist", None, 60, "test")])
    assert [r["regime"] for r in rows] == ["wide-10k", "wide"] and rows[0]["headroom"]["gain_points"] == 1.5
    assert "**+0.90**" in (tmp_path / "results" / "map.md").read_text()


def test_per_subnet_gains_count_helped_and_hurt_subnets(tmp_path: Path) -> None:
    rep = _load("reproduction")
    store = rep.Store(tmp_path)
    rng = np.random.default_rng(1)
    n = 4000
    base = np.stack([_correct(rng, n, 0.8) for _ in range(3)])
    method = base.copy()
    method[0, :400] = 1  # subnet 0 helped (up to +10 points)
    method[1, :400] = 0  # subnet 1 hurt
    for name, arr in (("supernet", base), ("tas-lora", method)):
        store.add({"stage": "ablation", "key": f"{name}-s0", "method": name, "seed": 0},
                  {"random_correct": arr, "headroom_correct": arr[:1]})
    space = SearchSpace.preset("fmnist")
    out = rep.per_subnet_gains(store, "tas-lora", [0], space)
    assert out["helped"] == 1 and out["hurt"] == 1 and len(out["subnets"]) == 3
    assert out["subnets"][0]["gain_points"] > 1 and out["subnets"][1]["gain_points"] < -1
    assert out["subnets"][2]["gain_points"] == 0.0
    assert out["subnets"][0]["flops"] == flops(space, Subnet.from_dict(out["subnets"][0]["subnet"]))


def test_routing_separation_tells_separated_from_uniform_routing() -> None:
    rep = _load("reproduction")
    space = SearchSpace.preset("fmnist-wide")
    groups = space.groups()
    k = len(groups)

    def cells(separated: bool) -> list[dict]:
        means = {}
        for g, grp in enumerate(groups):
            v = np.full(k, 1.0 / k)
            if separated:  # all mass on the experts of the same embed dim
                same = [j for j, other in enumerate(groups) if other.embed_dim == grp.embed_dim]
                v = np.zeros(k)
                v[same] = 1.0 / len(same)
            means[str(g)] = v.tolist()
        return [{"moved": {"routing_mean": means}}]

    sep = rep.routing_separation(cells(True), space)
    uni = rep.routing_separation(cells(False), space)
    assert all(m == pytest.approx(1.0) for m in sep["own_embed_mass"].values())
    assert all(m == pytest.approx(1 / 3) for m in uni["own_embed_mass"].values())
    assert sep["tv_within_embed"] == pytest.approx(0.0) and sep["tv_across_embed"] == pytest.approx(1.0)
    assert uni["tv_across_embed"] == pytest.approx(0.0)
    assert rep.routing_separation([{"moved": {}}], space) is None


def test_linear_scope_fine_tunes_only_the_weights_the_experts_change(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from taslora_deploy.standalone import materialize

    rep = _load("reproduction")
    space = SearchSpace.preset("fmnist-wide")
    model = materialize(Supernet(space), smallest_subnet(space))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(3)]

    class Loader(list):
        def set_epoch(self, epoch: int) -> None:
            pass

    class Bundle:
        num_classes = 10

    class Data:
        config = DataConfig.fmnist()
        split = None

    monkeypatch.setattr(rep, "run_data", lambda args: Data())
    monkeypatch.setattr(rep, "build_data", lambda *a, **k: Bundle())
    monkeypatch.setattr(rep, "make_loaders", lambda *a, **k: type("L", (), {"train": Loader(batches)})())
    args = rep.parse_args(["headroom", "--epochs", "1", "--finetune-lr", "1e-2"])
    rep.finetune_standalone(model, args, scope="linear")
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"blocks.{b}.{p}.weight" for b in range(2) for p in ("attn.qkv", "attn.proj", "fc1", "fc2")}


def test_diagnose_runs_headroom_linear_then_one_seed_of_every_method_first(monkeypatch: pytest.MonkeyPatch) -> None:
    hm = _load("headroom_map")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(hm, "run_stage", lambda regime, stage, *extra: calls.append((stage, *extra)))
    regime = hm.Regime("wide-10k", "fmnist-wide", 10000, 120, "test")
    hm.run_diagnostics(regime, ["tas-lora-pos", "tas-lora-3x"], ["0", "1", "2"])
    assert calls == [("headroom-linear",),
                     ("ablation", "--methods", "tas-lora-pos", "tas-lora-3x", "--seeds", "0"),
                     ("ablation", "--methods", "tas-lora-pos", "tas-lora-3x", "--seeds", "1", "2"),
                     ("report",)]
    calls.clear()
    hm.run_diagnostics(regime, ["tas-lora-r32"], ["0"])
    assert [c[0] for c in calls] == ["headroom-linear", "ablation", "report"]
