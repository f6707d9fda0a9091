"""Pareto search (`taslora search --pareto`): NSGA-II's pieces on hand-made points, the pareto.json format and its
reader, the multi-objective evolution (constraints, non-domination, determinism, resume), the CLI
(also under torchrun with 2 processes), the latency objective's report and the note that a bound does not bind."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env
from taslora_core import complexity
from test_search import Recorder, kill_fitness_after  # Recorder: a fitness that records its calls (and kills)
from taslora_core.search import (
    Constraints, ParetoFileError, ParetoFront, ParetoMember, SearchError, check_same_space, parse_objectives,
    read_pareto, write_pareto,
)
from taslora_core.search.measures import measure
from taslora_core.search.nsga import (
    crowding_distance, dominates, hypervolume_2d, non_dominated_sort, nsga_select, pareto_indices,
)
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, smallest_subnet

SPACE = SearchSpace.preset("fmnist")


# ---------------------------------------------------------------------------------------------- NSGA-II pieces
POINTS = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (5.0, 5.0), (2.0, 3.0), (3.0, 2.0)]
#          front 0      front 0     front 1     front 0     front 2     front 0 (=1)  front 0


def test_dominance_and_non_dominated_sort() -> None:
    assert dominates((1, 1), (1, 2)) and not dominates((1, 2), (1, 2)) and not dominates((1, 3), (2, 1))
    fronts = non_dominated_sort(POINTS)
    assert sorted(fronts[0]) == [0, 1, 3, 5, 6]
    assert fronts[1] == [2] and fronts[2] == [4]
    assert sorted(i for f in fronts for i in f) == list(range(len(POINTS)))
    assert pareto_indices(POINTS) == [0, 1, 3, 5, 6] and pareto_indices([]) == []


def test_two_objective_sweep_equals_the_general_sort() -> None:
    import random

    rng = random.Random(0)
    for _ in range(50):
        pts = [(float(rng.randint(0, 6)), float(rng.choice([rng.randint(0, 6), math.inf]))) for _ in range(12)]
        assert pareto_indices(pts) == sorted(non_dominated_sort(pts)[0]), pts


def test_crowding_distance_by_hand() -> None:
    pts = [(0.0, 4.0), (1.0, 2.0), (3.0, 1.0), (4.0, 0.0)]
    d = crowding_distance(pts, [0, 1, 2, 3])
    assert d[0] == math.inf and d[3] == math.inf
    # point 1: neighbours 0 and 2 -> (3-0)/4 + (4-1)/4 = 1.5; point 2: neighbours 1 and 3 -> 3/4 + 2/4 = 1.25
    assert d[1] == pytest.approx(1.5) and d[2] == pytest.approx(1.25)
    assert crowding_distance(pts, [1, 2]) == {1: math.inf, 2: math.inf}


def test_nsga_select_fills_by_front_then_crowding() -> None:
    pts = [(0.0, 4.0), (1.0, 2.0), (3.0, 1.0), (4.0, 0.0), (5.0, 5.0)]
    assert nsga_select(pts, 5) == [0, 3, 1, 2, 4]  # extremes first, then the less crowded, then front 1
    assert nsga_select(pts, 3) == [0, 3, 1]
    assert nsga_select(pts, 2, tiebreak=["b", "z", "z", "a", "z"]) == [3, 0]  # inf ties broken by tiebreak


def test_hypervolume_by_hand() -> None:
    ref = (5.0, 5.0)
    assert hypervolume_2d([(1.0, 1.0)], ref) == pytest.approx(16.0)
    # (1,3) and (3,1): 4*2 + 2*4 - 2*2 overlap = 12
    assert hypervolume_2d([(1.0, 3.0), (3.0, 1.0)], ref) == pytest.approx(12.0)
    assert hypervolume_2d([(1.0, 3.0), (3.0, 1.0), (4.0, 4.0)], ref) == pytest.approx(12.0)  # dominated: nothing
    assert hypervolume_2d([(6.0, 1.0), (5.0, 0.0)], ref) == 0.0  # beyond the reference: nothing
    assert hypervolume_2d([], ref) == 0.0


def test_parse_objectives() -> None:
    assert parse_objectives("loss,flops") == ("loss", "flops")
    assert parse_objectives(" error , latency ") == ("error", "latency")
    for bad in ("loss,speed", "flops,loss", "loss", "loss,flops,params"):
        with pytest.raises(SearchError) as err:
            parse_objectives(bad)
        assert "\n" not in str(err.value) and "loss,flops" in str(err.value)


# ---------------------------------------------------------------------------------------------- pareto.json
def _record(subnet: Subnet, loss: float) -> dict:
    return {"subnet": subnet.to_dict(), "loss": loss, "top1": 0.8, "fitness": loss, "generation": 0,
            **measure(SPACE, subnet)}


def _front(space: SearchSpace = SPACE) -> ParetoFront:
    recs = [_record(largest_subnet(space), 0.3), _record(smallest_subnet(space), 0.6)]
    members = [ParetoMember.from_record(r, ("loss", "flops"), "autoformer") for r in recs]
    return ParetoFront(("loss", "flops"), space, Constraints(), members, evaluations=2, single_objective_pick=members[0])


def test_pareto_file_round_trip(tmp_path: Path) -> None:
    path = write_pareto(tmp_path / "pareto.json", _front())
    front = read_pareto(tmp_path)  # a run folder is read too
    assert front.path == path and front.objectives == ("loss", "flops")
    assert front.subnets() == [smallest_subnet(SPACE), largest_subnet(SPACE)]  # sorted by cost ascending
    assert front.members[0].objectives["flops"] == complexity.flops(SPACE, smallest_subnet(SPACE))
    assert front.single_objective_pick is not None and front.single_objective_pick.subnet == largest_subnet(SPACE)
    check_same_space(front, SPACE)
    other = SearchSpace.preset("autoformer-t")
    with pytest.raises(ParetoFileError, match="searched in space 'fmnist'"):
        check_same_space(front, other)


def _damage(doc: dict, how: str) -> dict:
    if how == "tag":
        doc["format"] = "taslora-search"
    elif how == "missing":
        del doc["members"]
    elif how == "empty":
        doc["members"] = []
    elif how == "outside":
        doc["members"][0]["subnet"]["embed_dim"] = 1000
    elif how == "dominated":
        doc["members"][1]["objectives"]["loss"] = 0.7  # the larger subnet is now worse in both
    elif how == "objective":
        del doc["members"][0]["objectives"]["loss"]
    return doc


@pytest.mark.parametrize("how, says", [
    ("truncated", "damaged or truncated (invalid JSON"), ("tag", "not a taslora pareto file"), ("missing", "lacks members"),
    ("empty", "front is empty"), ("outside", "not a subnet of the recorded space"),
    ("dominated", "dominates member"), ("objective", "lacks a value for objective loss"),
])
def test_damaged_pareto_file_is_one_line_naming_it(tmp_path: Path, how: str, says: str) -> None:
    path = write_pareto(tmp_path / "pareto.json", _front())
    if how == "truncated":
        path.write_text(path.read_text()[:200])
    else:
        path.write_text(json.dumps(_damage(json.loads(path.read_text()), how)))
    with pytest.raises(ParetoFileError) as err:
        read_pareto(path)
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg and str(path) in msg and says in msg
    with pytest.raises(ParetoFileError, match="does not exist"):
        read_pareto(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------- the evolution
LO, HI = (complexity.flops(SPACE, f(SPACE)) for f in (smallest_subnet, largest_subnet))
CAP = LO + 0.7 * (HI - LO)
SMALL = dict(population=12, iterations=4, parents=6, mutation_num=6, crossover_num=6)


def quality(subnet: Subnet) -> dict:
    """A synthetic loss that falls with size (more blocks, wider MLPs) plus a gene-dependent wiggle, so that
    the loss/FLOPs trade-off has a real front."""
    size = complexity.params(SPACE, subnet) / 1e6
    wiggle = sum((h * 7 + int(r * 3)) % 5 for h, r in zip(subnet.num_heads, subnet.mlp_ratios)) / 100
    loss = 1.0 / (0.2 + size) + wiggle
    return {"fitness": loss, "loss": loss, "top1": 1 - loss / 10}


def _pareto(seed: int = 0, fn=None, objectives=("loss", "flops"), constraints=None, **kw):
    from taslora_core.search import EvolutionSearch, SearchConfig

    fn = fn or Recorder(quality)
    cfg = SearchConfig(seed=seed, objectives=list(objectives), **{**SMALL, **kw})
    return EvolutionSearch(SPACE, fn, constraints or Constraints(flops_max=CAP), cfg), fn


def _vectors(records: list[dict], objectives=("loss", "flops")) -> list[tuple]:
    from taslora_core.search.objectives import objective_vector

    return [objective_vector(r, objectives) for r in records]


def test_pareto_evolution_front_is_the_non_dominated_set_within_the_constraints() -> None:
    cons = Constraints(flops_max=CAP, params_min=complexity.params(SPACE, smallest_subnet(SPACE)) * 1.1)
    search, calls = _pareto(constraints=cons)
    result = search.run()
    assert result.objectives == ("loss", "flops") and len(result.history) > SMALL["population"]
    for r in [*result.history, *result.front]:
        assert r["flops_autoformer"] <= CAP and r["params"] >= cons.params_min
    front = _vectors(result.front)
    assert len(front) >= 3
    assert not any(dominates(a, b) for a in front for b in front)
    everything = _vectors(result.history)
    assert all(not dominates(p, f) for p in everything for f in front)  # nothing evaluated beats a member
    assert sorted(map(tuple, front)) == sorted(everything[i] for i in pareto_indices(everything))
    assert [f[1] for f in front] == sorted(f[1] for f in front)  # cost ascending
    assert result.best["fitness"] == min(r["fitness"] for r in result.history)  # the single-objective pick
    assert result.best["key"] == result.front[-1]["key"]  # the lowest loss ends the front


def test_pareto_selection_keeps_the_extremes_single_objective_does_not() -> None:
    search, _ = _pareto(iterations=0)
    search.run()
    keys = search.population
    parents = search.merge_topk([], keys, 4)
    points = {k: search.objective_point(k) for k in keys}
    cheapest = min(keys, key=lambda k: (points[k][1], points[k][0]))
    assert cheapest in parents  # an extreme of the front has infinite crowding distance
    search.objectives = None  # the single-objective top-k picks by loss only
    assert search.merge_topk([], keys, 4) == sorted(keys, key=lambda k: (search.cache[k]["fitness"], k))[:4]


def test_pareto_front_is_deterministic_for_a_seed() -> None:
    a, b, c = (_pareto(seed=s)[0].run() for s in (4, 4, 5))
    assert a.history == b.history and a.front == b.front
    assert [r["key"] for r in c.history] != [r["key"] for r in a.history]


@pytest.mark.parametrize("interrupt_after", [7, 30])  # inside generation 0, mid-run
def test_pareto_resume_after_a_kill_gives_the_same_front(tmp_path: Path, interrupt_after: int) -> None:
    expected = _pareto(seed=2)[0].run()
    state = tmp_path / "state.json"
    first, _ = _pareto(seed=2, fn=Recorder(quality, interrupt_after=interrupt_after))
    with pytest.raises(KeyboardInterrupt):
        first.run(state_path=state)
    result = _pareto(seed=2)[0].run(state_path=state)
    assert result.front == expected.front and result.history == expected.history
    # a saved Pareto search is not continued with other objectives, nor as a single-objective search
    with pytest.raises(SearchError, match="objectives"):
        _pareto(seed=2, objectives=("loss", "params"))[0].run(state_path=state)
    from taslora_core.search import EvolutionSearch, SearchConfig

    single = EvolutionSearch(SPACE, quality, Constraints(flops_max=CAP), SearchConfig(seed=2, **SMALL))
    with pytest.raises(SearchError, match="objectives"):
        single.run(state_path=state)


def test_latency_objective_reads_the_records_latency() -> None:
    def with_latency(subnet: Subnet) -> dict:  # a stand-in for a measured latency: depth-bound, not FLOPs-bound
        return {**quality(subnet), "latency_ms": 0.5 * subnet.depth + subnet.embed_dim / 1000}

    result = _pareto(fn=Recorder(with_latency), objectives=("loss", "latency"))[0].run()
    lat = [r["latency_ms"] for r in result.front]
    assert lat == sorted(lat) and not any(dominates(a, b) for a in _vectors(result.front, ("loss", "latency"))
                                          for b in _vectors(result.front, ("loss", "latency")))


def test_latency_report_spearman_and_cliffs() -> None:
    from taslora_core.search.latency_report import latency_report, spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties get their average rank
    assert spearman([1, 2], [1, 2]) is None
    import random

    from taslora_core.subnet import sample_distinct

    subnets = sample_distinct(SPACE, 5, random.Random(0))
    recs = [{"subnet": s.to_dict(), "flops_autoformer": f, "latency_ms": ms}
            for s, (f, ms) in zip(subnets, [(1e6, 1.0), (2e6, 2.0), (3e6, 1.5), (4e6, 4.0), (5e6, 1.52)])]
    rep = latency_report(recs, "fake")
    assert rep["measured"] == 5 and rep["spearman_flops_latency"] == pytest.approx(0.5)  # 1 - 6 * 10 / (5 * 24)
    # fewer FLOPs yet slower by > 5%: (2M, 2.0) vs (3M, 1.5) and vs (5M, 1.52); (4M, 4.0) vs (5M, 1.52)
    assert rep["cliff_count"] == 3 and rep["cliffs"][0]["flops"] == [4e6, 5e6]
    # a lookup that re-times the pairs interleaved confirms only the real ones
    real = {(4e6, 5e6)}
    rep = latency_report(recs, "fake", compare=lambda a, b: (
        {"ratio_median": 2.0, "ratio_p10": 1.8, "ratio_p90": 2.2} if (a, b) == (subnets[3], subnets[4])
        else {"ratio_median": 1.01, "ratio_p10": 0.9, "ratio_p90": 1.1}))
    assert rep["cliff_candidates"] == 3 and rep["cliffs_checked"] == 3 and rep["cliff_count"] == 1
    assert {tuple(c["flops"]) for c in rep["cliffs"]} == real and rep["cliffs"][0]["confirmed"]


def test_bounds_that_do_not_bind_are_named() -> None:
    from taslora_core.search.messages import non_binding

    plo = complexity.params(SPACE, smallest_subnet(SPACE))
    notes = non_binding(Constraints(flops_max=1.3e9, flops_min=LO / 2, params_max=1e9, params_min=plo), SPACE)
    assert len(notes) == 4 and all("does not bind" in n and "\n" not in n for n in notes)
    assert notes[0].startswith("--flops 1.300G does not bind") and complexity.format_amount(HI) in notes[0]
    assert any(n.startswith("--min-flops") for n in notes) and any(n.startswith("--min-params") for n in notes)
    assert non_binding(Constraints(flops_max=CAP, params_min=plo * 1.5), SPACE) == []


# ---------------------------------------------------------------------------------------------- CLI, trained workspace
CLI_SMALL = ["--population", "8", "--iterations", "2", "--parents", "4", "--mutation-num", "4", "--crossover-num", "4",
             "--val-subset", "200", "--batch-size", "100", "--seed", "1"]
CLI_CAP = f"{int(CAP / 1e3)}K"


def _cli(args: list[str]):
    import importlib

    from typer.testing import CliRunner

    from taslora_cli.app import app

    importlib.import_module("taslora_cli.cmd_search")  # registers the command
    return CliRunner().invoke(app, ["search", *args])


@pytest.fixture(scope="module")
def pareto_run(trained_workspace, tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("pareto-ws")
    res = _cli(["--workdir", str(workdir), "--ckpt", str(trained_workspace["mole_dir"]), "--pareto",
                "--flops", CLI_CAP, *CLI_SMALL])
    assert res.exit_code == 0, res.output
    best = Path(res.stdout.strip().splitlines()[-1])
    return {"res": res, "best": best, "run": best.parent, "workdir": workdir}


def test_cli_pareto_writes_a_valid_front_within_the_constraints(pareto_run) -> None:
    run, res = pareto_run["run"], pareto_run["res"]
    front = read_pareto(run / "pareto.json")
    assert front.objectives == ("loss", "flops") and front.counter == "autoformer" and front.target is None
    assert front.space == SPACE and front.ckpt_kind == "mole" and front.use_experts and front.seed == 1
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert front.evaluations == len(history) and Path(front.search_run) == run
    for m in front.members:
        assert m.flops_autoformer <= CAP and m.objectives["flops"] == m.flops_autoformer
        assert m.objectives["loss"] == m.loss and m.latency_source is None and m.subnet.in_space(SPACE)
    vectors = [(m.objectives["loss"], m.objectives["flops"]) for m in front.members]
    assert not any(dominates(a, b) for a in vectors for b in vectors)
    assert all(not dominates((r["loss"], r["flops_autoformer"]), v) for r in history for v in vectors)
    assert [v[1] for v in vectors] == sorted(v[1] for v in vectors)
    best = json.loads(pareto_run["best"].read_text())  # best.json stays: the single-objective pick
    assert front.single_objective_pick is not None and front.single_objective_pick.subnet == Subnet.from_dict(best)
    assert front.single_objective_pick.subnet in front.subnets()  # the lowest loss is on the front
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["front_size"] == len(front.members) and summary["objectives"] == ["loss", "flops"]
    assert "Pareto front" in res.stdout and "pareto.json" in res.stdout and "| front " in res.stdout


def test_cli_pareto_resumes_after_a_kill_to_the_same_front(pareto_run, trained_workspace, monkeypatch,
                                                           tmp_path) -> None:
    from taslora_core.search import fitness as search_fitness

    real = kill_fitness_after(monkeypatch, 13)  # inside generation 1
    args = ["--workdir", str(tmp_path), "--ckpt", str(trained_workspace["mole_dir"]), "--pareto", "--flops", CLI_CAP,
            *CLI_SMALL]
    assert _cli(args).exit_code == 130
    monkeypatch.setattr(search_fitness.CheckpointFitness, "__call__", real)
    res = _cli(["--workdir", str(tmp_path), "--resume"])
    assert res.exit_code == 0, res.output
    got, ref = read_pareto(Path(res.stdout.strip().splitlines()[-1]).parent), read_pareto(pareto_run["run"])
    assert got.subnets() == ref.subnets()  # same front as the uninterrupted run (determinism for a seed)
    assert [m.loss for m in got.members] == pytest.approx([m.loss for m in ref.members], abs=1e-6)


def test_cli_pareto_ddp_two_processes_give_the_front_of_one(pareto_run, trained_workspace, tmp_path) -> None:
    """torchrun with 2 CPU processes (gloo), each evaluating half of the validation images: the same candidates,
    the same front (losses within 1e-5 of the 1-process run), world_size 2 recorded, and only rank 0 writes."""
    workdir = tmp_path / "ws"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "taslora_cli.main", "search", "--workdir", str(workdir), "--ckpt", str(trained_workspace["mole_dir"]),
           "--pareto", "--flops", CLI_CAP, *CLI_SMALL]
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run,) = [p for p in (workdir / "searches").iterdir() if p.is_dir()]
    assert Path(proc.stdout.splitlines()[-1]) == run / "best.json"
    ref_run = pareto_run["run"]
    got, ref = read_pareto(run), read_pareto(ref_run)
    assert got.subnets() == ref.subnets() and len(got.members) >= 2
    for a, b in zip(got.members, ref.members):
        assert a.loss == pytest.approx(b.loss, abs=1e-5) and a.top1 == pytest.approx(b.top1, abs=1e-9)
        assert a.objectives["flops"] == b.objectives["flops"]
    assert got.single_objective_pick.subnet == ref.single_objective_pick.subnet
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    ref_history = [json.loads(line) for line in (ref_run / "history.jsonl").read_text().splitlines()]
    assert [r["key"] for r in history] == [r["key"] for r in ref_history]  # the ranks ran the 1-process evolution
    assert {r["count"] for r in history} == {200}  # both shards counted: the full --val-subset per candidate
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["front_size"] == len(got.members)
    assert json.loads((run / "search.json").read_text())["world_size"] == 2
    # only rank 0 wrote: one run folder (above), one pareto.json and one pareto.png in all, nothing in the cwd
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("pareto.*")]
    assert sorted(written) == sorted(p.relative_to(tmp_path) for p in (run / "pareto.json", run / "pareto.png"))
    assert sorted(os.listdir(tmp_path)) == ["ws"]


@pytest.mark.parametrize("bad, says", [
    (["--objectives", "loss,speed"], "unknown objective 'speed'"),
    (["--pareto", "--objectives", "flops,loss"], "give one quality and one cost objective"),
    (["--objectives", "loss,latency", "--target", "tpu"], "unknown --target 'tpu'"),
])
def test_cli_bad_objectives_exit_2_in_one_line(tmp_path, bad, says) -> None:
    res = _cli(["--workdir", str(tmp_path), *bad])
    assert res.exit_code == 2 and says in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_cli_latency_objective_records_spearman_and_says_the_bound_does_not_bind(trained_workspace, tmp_path,
                                                                                monkeypatch) -> None:
    from taslora_core.search import latency_report

    monkeypatch.setattr(latency_report, "CLIFF_CHECKS", 2)  # each check re-times two subnets interleaved
    res = _cli(["--workdir", str(tmp_path), "--ckpt", str(trained_workspace["mole_dir"]), "--objectives",
                "loss,latency", "--target", "torch-cpu", "--flops", "1.3G", "--population", "6", "--iterations", "1",
                "--parents", "3", "--val-subset", "100", "--batch-size", "100"])
    assert res.exit_code == 0, res.output
    run = Path(res.stdout.strip().splitlines()[-1]).parent
    front = read_pareto(run)
    assert front.objectives == ("loss", "latency") and front.target == "torch-cpu"
    assert all(m.latency_source == "measured" and m.objectives["latency"] == m.latency_ms > 0 for m in front.members)
    summary = json.loads((run / "summary.json").read_text())
    report = summary["latency_report"]
    assert report["measured"] == summary["evaluations"] and -1.0 <= report["spearman_flops_latency"] <= 1.0
    assert report["cliffs_checked"] <= 2 and front.extra["latency_report"] == report
    assert "Spearman rank correlation" in res.stdout
    note = next(n for n in summary["notes"] if "does not bind" in n)
    assert note.startswith("--flops 1.300G does not bind") and "10.458M" in note
    assert res.stderr.count("note: --flops 1.300G does not bind") == 1  # said once, when the search starts
    assert list((tmp_path / "latency-cache").glob("torch-cpu-*.json"))  # the --latency-budget cache, reused


def test_latency_objective_takes_the_budget_target_when_it_names_none():
    """A library caller naming the target once (on the budget) gets that target, not a clash with a default."""
    from taslora_core.search import Constraints, SearchConfig
    from taslora_core.search.objectives import DEFAULT_LATENCY_TARGET
    from taslora_core.search.latency_setup import latency_target

    cfg = SearchConfig(objectives=["loss", "latency"])
    assert latency_target(Constraints(latency_max_ms=5.0, latency_target="ort-cpu"), cfg) == "ort-cpu"
    assert latency_target(Constraints(), cfg) == DEFAULT_LATENCY_TARGET
    with pytest.raises(ValueError, match="different targets"):
        latency_target(Constraints(latency_max_ms=5.0, latency_target="ort-cpu"),
                       SearchConfig(objectives=["loss", "latency"], latency_target="torch-cpu"))
