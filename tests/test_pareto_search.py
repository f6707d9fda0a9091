"""Pareto search (`taslora search --pareto`): NSGA-II's pieces on hand-made points, the pareto.json format and its
reader, the multi-objective evolution (constraints, non-domination, determinism, resume), the CLI, the latency
objective's report and the note that a bound does not bind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from taslora_core import complexity
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
    ("truncated", "not valid JSON"), ("tag", "not a taslora pareto file"), ("missing", "missing keys members"),
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
