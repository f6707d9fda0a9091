"""Latency models (issue 19): the measurement design, the fit and its accuracy, latency-model.json, `latency fit`
on torch-cpu / ort-cpu / a fake TensorRT, and the model-driven search whose pick is verified by measurement."""

from __future__ import annotations

import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_fmnist, run_cli
from taslora_core.search import Constraints, SearchConfig, SearchRunConfig, read_pareto, run_search
from taslora_core.search.latency_design import design_subnets, heldout_subnets
from taslora_core.search.latency_fit import FittedTerms, accuracy, choose_ridge, cliff_pairs, fit_terms, flops_proxy
from taslora_core.search.latency_model import (
    LatencyModel, LatencyModelError, check_for_search, read_latency_model, write_latency_model,
)
from taslora_core.search.latency_setup import LatencyOptions, setup_latency
from taslora_core.search.latency_verify import LatencyVerificationError
from taslora_core.search.measures import flops_of
from taslora_core.search.messages import describe
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, smallest_subnet
from taslora_core.testing import random_mole, save_mole_workspace

SPACE = SearchSpace.preset("fmnist")


# ---------------------------------------------------------------------------------------------- design
def test_design_covers_every_extreme_and_block_type_and_is_a_prefix() -> None:
    design = design_subnets(SPACE, 24, seed=3)
    keys = {s.key() for s in design}
    assert len(keys) == 24 and smallest_subnet(SPACE).key() in keys and largest_subnet(SPACE).key() in keys
    for dim, values in (("embed_dim", SPACE.embed_dims), ("depth", SPACE.depths)):
        assert {getattr(s, dim) for s in design[:6]} >= {min(values), max(values)}
    uniform = {(s.embed_dim, s.num_heads[0], s.mlp_ratios[0]) for s in design
               if len(set(s.num_heads)) == 1 and len(set(s.mlp_ratios)) == 1}
    assert len(uniform) == len(SPACE.embed_dims) * len(SPACE.num_heads) * len(SPACE.mlp_ratios)  # every block type
    assert design_subnets(SPACE, 10, seed=3) == design[:10]  # --samples 10 measures a prefix of --samples 24
    held = heldout_subnets(SPACE, 30, design, seed=3)
    assert len(held) == 30 and not keys & {s.key() for s in held}


# ---------------------------------------------------------------------------------------------- fit
def synthetic_ms(subnet: Subnet, noise: float = 0.0, rng: random.Random | None = None) -> float:
    """A runtime whose blocks cost a fixed launch overhead plus shape-dependent work, with one shape (3 heads at
    MLP ratio 2 on embed 80) slower than its FLOPs say: depth dominates, so FLOPs have cliffs."""
    ms = 0.05 + 0.0004 * subnet.embed_dim
    for h, r in zip(subnet.num_heads, subnet.mlp_ratios):
        ms += 0.06 + 1.5e-6 * subnet.embed_dim * subnet.embed_dim * (1 + r) + 0.004 * h
        ms += 0.02 if (subnet.embed_dim, h, r) == (80, 3, 2.0) else 0.0
    return ms * (1.0 + (rng.gauss(0, noise) if rng is not None else 0.0))


def test_fit_captures_the_cliffs_flops_miss() -> None:
    rng = random.Random(0)
    design = design_subnets(SPACE, 32)
    held = heldout_subnets(SPACE, 64, design)
    y_fit = [synthetic_ms(s, 0.01, rng) for s in design]
    y_held = [synthetic_ms(s) for s in held]
    ridge, cv = choose_ridge(SPACE, design, y_fit)
    assert set(cv) == {"0", "0.01", "0.1", "1", "10", "100", "features"} and cv[_key(ridge)] == min(cv.values())
    terms = fit_terms(SPACE, design, y_fit, ridge)
    predicted = [terms.predict(SPACE, s) for s in held]
    acc = accuracy(predicted, y_held)
    assert acc["within_10pct"] >= 0.95 and acc["spearman"] >= 0.95 and acc["mape"] < 0.03
    flops = [flops_of(SPACE, s, "autoformer") for s in held]
    a, b = flops_proxy([flops_of(SPACE, s, "autoformer") for s in design], y_fit)
    proxy = accuracy([a + b * f for f in flops], y_held)
    assert proxy["spearman"] < acc["spearman"] - 0.05 and proxy["mape"] > 2 * acc["mape"]
    cliffs = cliff_pairs(flops, y_held, predicted)
    assert cliffs["pairs"] > 10 and cliffs["ordered_right_by_model"] >= 0.95 * cliffs["pairs"]
    # the lookup gets the slow block type the features cannot express
    lookup = fit_terms(SPACE, design, y_fit, 0.0)
    assert lookup.lookup["e80-h3-r2"] > lookup.lookup["e80-h2-r2"] + 0.01


def _key(ridge: float | None) -> str:
    return "features" if ridge is None else f"{ridge:g}"


# ---------------------------------------------------------------------------------------------- model file
def model_of(terms: FittedTerms, target: str = "torch-cpu", batch: int = 1, space: SearchSpace = SPACE) -> LatencyModel:
    return LatencyModel(target=target, batch=batch, space=space, terms=terms, host="test-host",
                        info={"heldout": {"n": 4, "mape": 0.02, "within_10pct": 1.0, "max_error": 0.05,
                                          "spearman": 1.0}})


def depth_model(per_block: float = 0.5, const: float = 1.0) -> FittedTerms:
    """Predicts const + per_block * depth ms."""
    from taslora_core.search.latency_features import FEATURES

    return FittedTerms(features={n: {"const": const, "blocks": per_block}.get(n, 0.0) for n in FEATURES}, ridge=None)


def test_model_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = write_latency_model(tmp_path / "m", model_of(depth_model()))
    assert path.name == "latency-model.json"
    model = read_latency_model(tmp_path / "m")
    s = largest_subnet(SPACE)
    assert model.predict(s) == pytest.approx(1.0 + 0.5 * s.depth) and model.sha256 and model.target == "torch-cpu"
    check_for_search(model, SPACE, "torch-cpu", 1)
    for target, batch, space, says in (("ort-cpu", 1, SPACE, "fitted for target torch-cpu"),
                                       (None, 32, SPACE, "fitted at batch 1"),
                                       (None, None, SearchSpace.preset("autoformer-t"), "fitted on search space")):
        with pytest.raises(LatencyModelError, match=says):
            check_for_search(model, space, target, batch)
    path.write_text(path.read_text().replace('"blocks": 0.5', '"blocks": 0.25'))  # an edited number
    with pytest.raises(LatencyModelError, match="modified since it was written"):
        read_latency_model(path)
    path.write_text("{not json")
    with pytest.raises(LatencyModelError, match="latency model"):
        read_latency_model(path)


def test_screening_slack_lets_near_budget_predictions_through_only_when_predicted() -> None:
    from taslora_core.search.latency_setup import screening_slack

    small = smallest_subnet(SPACE)
    for predicted, slack, ok in ((True, 0.1, True), (True, 0.0, False), (False, 0.1, False)):
        cons = Constraints(latency_max_ms=1.0, latency_predicted=predicted, latency_slack=slack, latency_fn=lambda s: 1.05)
        assert cons.satisfied(SPACE, small) is ok
    assert "predicted (+10.0% slack)" in describe(Constraints(latency_max_ms=1.0, latency_predicted=True, latency_slack=0.1))
    model = model_of(depth_model())
    assert screening_slack(model, None) == 0.02 and screening_slack(model, 0.0) == 0.0  # default: held-out MAPE
    with pytest.raises(ValueError, match="--latency-slack"):
        screening_slack(model, 1.5)


# ---------------------------------------------------------------------------------------------- lookup (measuring)
def test_confirmed_value_keeps_the_fastest_confirmed_passes() -> None:
    from taslora_deploy.latency_lookup import confirmed_value

    def close(got: tuple[float, bool], want: tuple[float, bool]) -> bool:
        return got[0] == pytest.approx(want[0]) and got[1] == want[1]

    assert close(confirmed_value([1.02, 1.0, 1.01]), (1.01, True))  # quiet: the median of all passes
    assert close(confirmed_value([1.0, 1.5, 1.01]), (1.005, True))  # a slowed pass is left out
    assert close(confirmed_value([1.0, 1.45, 1.5]), (1.475, False))  # two slowed passes: the fast one unexplained
    assert close(confirmed_value([1.0, 1.45, 1.5, 1.03]), (1.015, True))  # ... until another pass confirms it
    assert close(confirmed_value([0.7, 1.0, 1.02, 1.6]), (1.01, False))  # a lone fast pass is not trusted
    assert confirmed_value([1.0, 2.0, 4.0]) == (2.0, False)  # nothing confirmed: the median
    assert confirmed_value([3.0]) == (3.0, False)
    with pytest.raises(ValueError):
        confirmed_value([])


def test_measure_many_retimes_until_the_fastest_pass_is_confirmed(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a scripted clock: a subnet slowed in two of its first three passes is timed again until its fast pass is
    confirmed; a steady one is not; one that never repeats stops at the pass cap and is counted unconfirmed."""
    from taslora_core.supernet import Supernet
    from taslora_deploy.latency_lookup import LatencyTable

    subnets = design_subnets(SPACE, 3)
    script = {0: [1.0, 1.45, 1.5, 1.48, 1.02, 9.0], 1: [2.0, 2.02, 2.01, 9.0], 2: [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]}
    table = LatencyTable(Supernet(SPACE), "torch-cpu", warmup=0, iters=2)
    monkeypatch.setattr(table, "_runner", lambda subnet: (subnets.index(subnet), None))
    monkeypatch.setattr(table, "_time", lambda i: script[i].pop(0))
    values = table.measure_many(subnets, rounds=3, max_rounds=5, paired=False)
    keys = [LatencyTable.key(s) for s in subnets]
    assert [len(table.rounds[k]) for k in keys] == [5, 3, 5]
    assert values[keys[0]] == pytest.approx(1.01) and values[keys[1]] == pytest.approx(2.01)
    assert values[keys[2]] == 4.0 and table.unsettled == 1


def test_fit_config_refuses_a_pass_cap_below_the_passes() -> None:
    from taslora_deploy.fit_latency import FitConfig
    from taslora_deploy.latency_lookup import LatencyUnavailable

    assert FitConfig(rounds=4).max_rounds == 9 and FitConfig(rounds=3, max_rounds=3).max_rounds == 3
    with pytest.raises(LatencyUnavailable, match="--max-rounds >= --rounds"):
        FitConfig(rounds=3, max_rounds=2)


def test_unpaired_passes_time_each_subnet_alone(tmp_path: Path) -> None:
    from taslora_core.supernet import Supernet
    from taslora_deploy.latency_lookup import LatencyTable

    table = LatencyTable(Supernet(SPACE), "torch-cpu", warmup=1, iters=3)
    table.measure_many(design_subnets(SPACE, 3), rounds=2, paired=False)
    assert table.reference is None and len(table.timings) >= 6
    paired = LatencyTable(Supernet(SPACE), "torch-cpu", warmup=1, iters=3)
    paired.measure_many(design_subnets(SPACE, 3), rounds=2)
    assert paired.reference is not None and paired.reference["ms"] > 0 and paired.reference["pairs"] >= 6 * 3


def test_measure_many_times_in_rounds_and_caches_per_batch(tmp_path: Path) -> None:
    from taslora_core.supernet import Supernet
    from taslora_deploy.latency_lookup import LatencyTable, confirmed_value, default_cache_path

    supernet = Supernet(SPACE)
    subnets = design_subnets(SPACE, 3)
    table = LatencyTable(supernet, "torch-cpu", warmup=1, iters=3, batch=2)
    values = table.measure_many(subnets, rounds=2)
    assert table.measured == 3 and all(2 <= len(table.rounds[k]) <= 5 for k in values)
    assert all(v == confirmed_value(table.rounds[k])[0] > 0 for k, v in values.items())
    table.measure_many(subnets)
    assert table.measured == 3  # nothing measured twice
    paths = {b: default_cache_path(tmp_path, "torch-cpu", SPACE, b) for b in (1, 32)}
    assert paths[1] != paths[32] and "-b32-" in paths[32].name
    table.cache_path = paths[32]
    table.save()
    assert LatencyTable(supernet, "torch-cpu", paths[32], batch=2).table == table.table
    assert LatencyTable(supernet, "torch-cpu", paths[32], batch=1).table == {}  # a batch-2 cache is not batch 1's


# ---------------------------------------------------------------------------------------------- fake TensorRT
class FakeEngine:
    """A TensorRT engine stand-in: the 'plan' names the subnet, a call busy-waits a time set by its shapes (wall
    clock, so the measurement is the same under load)."""

    builds: list[dict] = []

    def __init__(self, plan) -> None:
        subnet = Subnet.from_dict(json.loads(Path(plan).read_text()))
        self.seconds = 1e-4 * (1 + subnet.depth + subnet.embed_dim / 64)
        import torch

        self.device, self.input_dtype, self.stream = torch.device("cpu"), torch.float32, None

    def __call__(self, images):
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        return images


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT 'present': a fake export (the subnet as JSON), engine build (a copy, its profile recorded) and
    runner (FakeEngine)."""
    import shutil

    from taslora_deploy import measure_onnx, trt_engine

    def export(model, path, parts_dir, **_):
        Path(path).write_text(json.dumps(model.subnet.to_dict()))
        return Path(path)

    def build(onnx_path, plan_path, input_shape, min_batch=1, opt_batch=8, max_batch=64, **_):
        FakeEngine.builds.append({"min": min_batch, "opt": opt_batch, "max": max_batch})
        shutil.copyfile(onnx_path, plan_path)
        return Path(plan_path)

    FakeEngine.builds = []
    monkeypatch.setattr(trt_engine, "tensorrt_status", lambda: (True, "fake TensorRT"))
    monkeypatch.setattr(trt_engine, "build_engine", build)
    monkeypatch.setattr(trt_engine, "TrtRunner", FakeEngine)
    monkeypatch.setattr(measure_onnx, "assemble_onnx", export)
    return FakeEngine


def test_fit_on_trt_with_a_fake_engine_end_to_end(fake_tensorrt, tmp_path: Path) -> None:
    from taslora_core.supernet import Supernet
    from taslora_deploy.fit_latency import FitConfig, fit_latency_model

    config = FitConfig(target="trt", batches=(1, 4), samples=10, holdout=6, rounds=1, iters=5, warmup=1,
                       workdir=tmp_path, out=tmp_path / "models", export_dir=tmp_path / "onnx")
    result = fit_latency_model(Supernet(SPACE), config)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 16  # one export per subnet, shared by both batches
    assert {(b["min"], b["opt"], b["max"]) for b in fake_tensorrt.builds} == {(1, 1, 1), (4, 4, 4)}
    assert len(fake_tensorrt.builds) == 32 + 2  # an engine per subnet and batch size (profile exactly that batch),
    # and the reference subnet's that each batch size's passes are paired with
    model = read_latency_model(result.paths[4])
    assert model.target == "trt" and model.batch == 4 and result.paths[4] == tmp_path / "models" / "b4" / "latency-model.json"
    assert model.heldout["n"] == 6 and model.heldout["within_10pct"] >= 0.8  # busy-wait latencies: easy to fit
    assert len(model.info["measurements"]) == 16 and "tensorrt" in model.runtime
    # paired passes: the value is the ratio to the median-FLOPs subnet times its own latency, so on an engine
    # whose latency is set by its shapes the values are those latencies (busy-waits: within a few percent)
    from taslora_deploy.latency_lookup import median_flops_subnet

    pool = [Subnet.from_dict(m["subnet"]) for m in model.info["measurements"]]
    reference = model.info["fit"]["reference"]
    assert reference["subnet"] == median_flops_subnet(SPACE, pool).to_dict() and reference["pairs"] >= 16 * 5
    truth = {json.dumps(m["subnet"]): 1e3 * 1e-4 * (1 + Subnet.from_dict(m["subnet"]).depth
                                                      + Subnet.from_dict(m["subnet"]).embed_dim / 64)
             for m in model.info["measurements"]}
    assert reference["ms"] == pytest.approx(truth[json.dumps(reference["subnet"])], rel=0.25)
    assert all(m["latency_ms"] == pytest.approx(truth[json.dumps(m["subnet"])], rel=0.25)
               for m in model.info["measurements"])


def test_search_on_a_weak_model_repeats_its_warning(tmp_path: Path, capsys) -> None:
    from taslora_core.supernet import Supernet

    model = model_of(depth_model())
    model.info["heldout"]["within_10pct"] = 0.25
    path = write_latency_model(tmp_path / "weak", model)
    budget = Constraints.from_amounts(latency_budget=BUDGET, target=None)
    setup_latency(budget, SearchConfig(**SMALL), LatencyOptions(model=path, verify=False), Supernet(SPACE), None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning:" in err and "25% of held-out subnets within +-10%" in err
    good = write_latency_model(tmp_path / "good", model_of(depth_model()))
    setup_latency(budget, SearchConfig(**SMALL), LatencyOptions(model=good, verify=False), Supernet(SPACE), None)
    assert capsys.readouterr().err == ""


def test_quality_warning_names_the_share_the_noise_and_what_to_change() -> None:
    model = model_of(depth_model())
    assert model.quality_warning() is None and model.quality()["heldout_within_10pct"] == 1.0
    model.info["heldout"]["within_10pct"] = 0.5
    model.info["fit"] = {"noise": {"round_spread_median": 0.16, "round_spread_p90": 0.45}}
    line = model.quality_warning()
    assert line is not None and "\n" not in line and "50% of held-out subnets within +-10% (below 90%)" in line
    assert "noise p50 16% / p90 45%" in line and "--rounds 5" in line and "quieter machine" in line
    path = write_latency_model(Path(tempfile.mkdtemp()) / "m", model)
    assert read_latency_model(path).quality_warning() == model.quality_warning()


# ---------------------------------------------------------------------------------------------- latency fit CLI
def test_cli_latency_fit_torch_cpu_writes_a_scored_model_and_fills_the_cache(tmp_path: Path) -> None:
    res = run_cli(["latency", "fit", "--target", "torch-cpu", "--space", "fmnist", "--samples", "10", "--holdout", "4",
                   "--rounds", "2", "--iters", "3", "--warmup", "1", "--statistic", "min", "--workdir", tmp_path])
    assert res.exit_code == 0, res.output
    path = Path(res.stdout.strip().splitlines()[-1])
    doc = json.loads(path.read_text())
    assert path.name == "latency-model.json" and doc["target"] == "torch-cpu" and doc["batch"] == 1
    assert doc["threads"] == 1 and doc["statistic"] == "min" and doc["host"] and doc["runtime"]["torch"] and doc["form"] in ("features", "lookup", "lookup+features")
    assert set(doc["heldout"]) == {"n", "mape", "within_10pct", "max_error", "spearman"} and doc["heldout"]["n"] == 4
    assert doc["fit"]["samples"] == 10 and doc["fit"]["noise"]["round_spread_median"] is not None
    assert {m["role"] for m in doc["measurements"]} == {"fit", "heldout"} and "FLOPs" in res.stdout
    timings = doc["fit"]["timings"]  # every timing ran until known or to the cap, and says how many samples
    passes = sum(len(m["rounds_ms"]) for m in doc["measurements"])  # 2 each, more for the unconfirmed (at most 5)
    assert timings["timings"] == passes and 14 * 2 <= passes <= 14 * 5 and doc["fit"]["max_rounds"] == 5
    assert timings["samples_median"] >= 3 and 0.0 <= timings["known_share"] <= 1.0 and doc["fit"]["unconfirmed"] >= 0
    quality = doc["quality"]
    assert quality["heldout_within_10pct"] == doc["heldout"]["within_10pct"] and quality["noise_p50"] is not None
    assert "of held-out subnets within +-10%; round-to-round noise p50" in res.stdout
    assert set(doc["fit"]["load_average"]) == {"before", "after"} and "load average" in res.stdout
    assert ("warning: latency model unreliable" in res.stdout) == (quality["heldout_within_10pct"] < 0.9)
    assert (tmp_path / "latency-exports").is_dir() is False  # torch-cpu exports nothing
    (cache,) = (tmp_path / "latency-cache").glob("torch-cpu-b1-min-*.json")  # the searches' cache of the minimum
    assert len(json.loads(cache.read_text())["latency_ms"]) == 14 and json.loads(cache.read_text())["statistic"] == "min"
    res = run_cli(["latency", "fit", "--target", "tpu", "--space", "fmnist", "--workdir", tmp_path])
    assert res.exit_code == 2 and "unknown latency target 'tpu'" in res.output


# ---------------------------------------------------------------------------------------------- model-driven search
class FakeLookup:
    """A measured-latency lookup whose measurement is the model's prediction, except for the first `over` subnets
    it is asked about: those measure `budget + 1` ms (the model is wrong about them)."""

    def __init__(self, model: LatencyModel, budget: float, over: int, spec) -> None:
        self.model, self.budget, self.over, self.spec = model, budget, over, spec
        self.target, self.batch, self.cache_path, self.table, self.measured = spec.target, spec.batch, None, {}, 0
        self.asked: list[Subnet] = []

    def __call__(self, subnet: Subnet) -> float:
        self.asked.append(subnet)
        self.measured += 1
        return self.budget + 1.0 if len(self.asked) <= self.over else self.model.predict(subnet)

    def save(self) -> None:
        pass


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    from conftest import FMNIST_OK

    if not FMNIST_OK:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    root = tmp_path_factory.mktemp("latency-ws")
    w = save_mole_workspace(root, random_mole("fmnist", head_std=0.5, expert_std=0.05, up_only=True, router_std=None))
    model = write_latency_model(root / "model", model_of(depth_model()))
    return {"root": root, "mole": w.mole_dir, "model": model}


SMALL = dict(population=8, iterations=1, parents=3, val_subset=100, batch_size=100, seed=2)
BUDGET = 3.6  # the depth model predicts 3.0 / 3.5 / 4.0 ms at depth 4 / 5 / 6: depth 6 is out


def _search(ws: dict, tmp: Path, over: int = 1, objectives=None, verify: bool = True, tries: int = 10):
    model = read_latency_model(ws["model"])
    made: list[FakeLookup] = []

    def factory(supernet, spec):
        made.append(FakeLookup(model, BUDGET, over, spec))
        return made[-1]

    config = SearchRunConfig(budget=Constraints.from_amounts(latency_budget=BUDGET, target=None),
                             search=SearchConfig(**SMALL, objectives=objectives), ckpt=ws["mole"], workdir=tmp,
                             latency=LatencyOptions(model=ws["model"], verify=verify, tries=tries))
    return run_search(config, latency_factory=factory), made


@requires_fmnist
def test_model_search_measures_its_pick_and_never_returns_a_budget_breaker(ws, tmp_path: Path) -> None:
    run, (lookup,) = _search(ws, tmp_path, over=1)
    history = [json.loads(line) for line in (run.run_dir / "history.jsonl").read_text().splitlines()]
    assert all(r["latency_predicted_ms"] <= BUDGET and r["subnet"]["depth"] < 6 for r in history)  # screened by the model
    by_fitness = sorted(history, key=lambda r: (r["fitness"], r["key"]))
    rejected, second = by_fitness[0], by_fitness[1]
    assert (lookup.spec.target, lookup.spec.batch, lookup.spec.statistic) == ("torch-cpu", 1, "median")  # the model's
    assert lookup.asked[0] == Subnet.from_dict(rejected["subnet"])  # the top pick was measured first ...
    assert rejected["latency_rejected"] and rejected["latency_ms"] == BUDGET + 1.0  # ... and broke the budget
    best = json.loads(run.best_path.read_text())
    assert best["subnet"] == second["subnet"] and best["latency_ms"] <= BUDGET  # the next one, measured
    assert best["latency_source"] == "measured" and best["latency_predicted_ms"] == pytest.approx(best["latency_ms"])
    summary = json.loads((run.run_dir / "summary.json").read_text())
    check = summary["latency_verification"]
    assert check["verified"] and check["rejected"] == 1 and check["measured"] == 2 == len(lookup.asked)
    predicted_first = rejected["latency_predicted_ms"]
    assert check["measured_over_predicted"] == pytest.approx(((BUDGET + 1.0) / predicted_first + 1.0) / 2)
    assert summary["latency_model"]["sha256"] == read_latency_model(ws["model"]).sha256
    assert summary["latency_source"] == "measured" and summary["latency_batch"] == 1


def test_verification_screens_by_the_measured_over_predicted_ratio_after_two_rejections() -> None:
    from taslora_core.search.latency_verify import LatencyCheck, verify_best

    # fitness order 0..5; the model predicts 3.5 ms for the four best and 3.0 ms for the rest; the target runs 10%
    # slower than predicted, so every 3.5 ms candidate breaks the 3.6 ms budget and every 3.0 ms one meets it
    subnets = [Subnet(80, 4, [3.0] * 4, [2, 2, 2, 2]), Subnet(80, 4, [2.0] * 4, [2, 2, 2, 2]),
               Subnet(80, 4, [3.0] * 4, [3, 3, 3, 3]), Subnet(80, 4, [2.0] * 4, [3, 3, 3, 3]),
               Subnet(64, 4, [3.0] * 4, [2, 2, 2, 2]), Subnet(64, 4, [2.0] * 4, [2, 2, 2, 2])]
    predicted = [3.5, 3.5, 3.5, 3.5, 3.0, 3.0]
    history = [{"subnet": s.to_dict(), "key": [i], "fitness": float(i), "latency_predicted_ms": p}
               for i, (s, p) in enumerate(zip(subnets, predicted))]
    asked: list[Subnet] = []

    def measure(subnet: Subnet) -> float:
        asked.append(subnet)
        return 1.1 * predicted[subnets.index(subnet)]

    check = LatencyCheck()
    best = verify_best(history, measure, 3.6, check, tries=10)
    assert best["key"] == [4] and best["latency_ms"] == pytest.approx(3.3)
    assert asked == [subnets[0], subnets[1], subnets[4]]  # two rejections, then 3.5 x 1.1 > 3.6 is skipped unmeasured
    assert check.measured == 3 and len(check.rejected) == 2
    assert check.measured_over_predicted == pytest.approx(1.1) and check.drifted() and not check.drifted(0.2)
    assert check.to_dict()["measured_over_predicted"] == pytest.approx(1.1)
    with pytest.raises(LatencyVerificationError, match="2 best candidates by fitness"):  # nothing left under the ratio
        verify_best([dict(r) for r in history[:4]], measure, 3.6, LatencyCheck(), tries=10)


@requires_fmnist
def test_model_search_gives_up_in_one_line_when_every_measured_pick_breaks_the_budget(ws, tmp_path: Path) -> None:
    with pytest.raises(LatencyVerificationError, match="broke the 3.6 ms budget when measured.*refit"):
        _search(ws, tmp_path, over=100, tries=3)
    (run,) = (tmp_path / "searches").iterdir()
    assert not (run / "best.json").exists() and (run / "history.jsonl").exists()  # nothing unverified returned


@requires_fmnist
def test_model_search_without_verification_says_the_latency_is_predicted(ws, tmp_path: Path) -> None:
    run, made = _search(ws, tmp_path, verify=False)
    best = json.loads(run.best_path.read_text())
    assert not made and best["latency_ms"] is None and best["latency_source"] == "predicted"
    assert best["latency_predicted_ms"] <= BUDGET
    assert json.loads((run.run_dir / "summary.json").read_text())["latency_verification"]["verified"] is False


@requires_fmnist
def test_model_pareto_search_measures_every_front_member(ws, tmp_path: Path) -> None:
    run, (lookup,) = _search(ws, tmp_path, over=1, objectives=["loss", "latency"])
    front = read_pareto(run.run_dir)
    assert front.objectives == ("loss", "latency") and front.target == "torch-cpu"
    for m in front.members:  # every member measured, within the budget, and its objective is the measurement
        assert m.latency_source == "measured" and m.latency_ms is not None and m.latency_ms <= BUDGET
        assert m.objectives["latency"] == m.latency_ms and m.latency_predicted_ms is not None
    check = json.loads((run.run_dir / "summary.json").read_text())["latency_verification"]
    assert check["rejected"] >= 1 and lookup.asked[0] not in front.subnets()  # the budget breaker left the front
    assert {m.subnet for m in front.members} <= set(lookup.asked)


@requires_fmnist
def test_cli_model_search_refuses_a_model_of_another_target_or_batch(ws, tmp_path: Path) -> None:
    common = ["search", "--workdir", tmp_path, "--ckpt", ws["mole"], "--latency-budget", "3.6", "--latency-model",
              ws["model"], "--population", "4", "--iterations", "0", "--val-subset", "100"]
    for extra, says in ((["--target", "ort-cpu"], "fitted for target torch-cpu, not --target ort-cpu"),
                        (["--latency-batch", "32"], "fitted at batch 1, not --latency-batch 32")):
        res = run_cli([*common, *extra])
        assert res.exit_code == 2 and says in res.output and len(res.output.strip().splitlines()) == 1, res.output
    res = run_cli(["search", "--workdir", tmp_path, "--ckpt", ws["mole"], "--flops", "6M", "--latency-model", ws["model"]])
    assert res.exit_code == 2 and "--latency-model needs --latency-budget" in res.output


@requires_fmnist
def test_model_search_on_trt_verifies_with_the_fake_engine(ws, fake_tensorrt, tmp_path: Path) -> None:
    from taslora_deploy.latency_lookup import latency_factory

    trt_model = write_latency_model(tmp_path / "trt", model_of(depth_model(per_block=1e-4, const=2e-4), "trt"))
    config = SearchRunConfig(budget=Constraints.from_amounts(latency_budget=10.0, target=None),
                             search=SearchConfig(**{**SMALL, "population": 4, "iterations": 0}), ckpt=ws["mole"],
                             workdir=tmp_path, latency=LatencyOptions(model=trt_model))
    run = run_search(config, latency_factory=latency_factory(tmp_path))
    best = json.loads(run.best_path.read_text())
    assert best["latency_target"] == "trt" and best["latency_source"] == "measured" and 0 < best["latency_ms"] < 10
    assert fake_tensorrt.builds == [{"min": 1, "opt": 1, "max": 1}]  # one engine: the pick, measured once


# ---------------------------------------------------------------------------------------------- issue 21: classes
@requires_fmnist
def test_cli_search_refuses_data_with_another_class_count(tmp_path: Path) -> None:
    from PIL import Image

    rgb = dataclasses.replace(SPACE, name="rgb-small", in_chans=3)
    w = save_mole_workspace(tmp_path / "ws", random_mole(rgb), fmnist_data=False)
    for split in ("train", "val"):
        for i, cls in enumerate(("a", "b", "c")):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for j in range(3):
                Image.new("RGB", (28, 28), (80 * i, 40 * j, 9)).save(tmp_path / "data" / split / cls / f"{j}.png")
    res = run_cli(["search", "--workdir", tmp_path / "ws", "--ckpt", w.mole_dir, "--data", tmp_path / "data",
                   "--population", "2", "--iterations", "0"])
    out = res.output.strip()
    assert res.exit_code == 2 and len(out.splitlines()) == 1, out
    assert "has 3 classes" in out and "'rgb-small' has 10" in out and "drop --data" in out
    assert not list((tmp_path / "ws" / "searches").glob("*/best.json"))


def test_search_output_advises_a_refit_when_the_target_drifted_from_the_model(capsys: pytest.CaptureFixture) -> None:
    from types import SimpleNamespace

    from cli import search_output
    from taslora_core.search.latency_verify import LatencyCheck

    def lines(ratio: float) -> str:
        check = LatencyCheck(measured=3, rejected=[{"latency_predicted_ms": 0.24, "latency_ms": 0.26}],
                             measured_over_predicted=ratio)
        run = SimpleNamespace(latency_check=check, best={"latency_ms": 0.21, "latency_predicted_ms": 0.2},
                              constraints=SimpleNamespace(latency_max_ms=0.24, latency_target="ort-cpu"),
                              config=SimpleNamespace(latency_target=None), pareto=None)
        search_output.verification_lines(run)
        return capsys.readouterr().out

    out = lines(1.08)
    assert "1 rejected over the budget" in out and "8% slower than the latency model predicts" in out
    assert "refit" in out and "drift" not in lines(1.01)
