"""pareto.json: the front of a Pareto search (`taslora search --pareto`), its writer and its validating reader.

    {"format": "taslora-pareto", "version": 1,
     "objectives": ["loss", "flops"],            # all minimised: a quality objective, then a cost objective
     "target": null | "ort-cpu" | "torch-cpu" | "torch-cuda" | "trt",   # the latency objective's runtime
     "counter": "autoformer" | "macs", "space": SearchSpace.to_dict(), "constraints": Constraints.to_dict(),
     "ckpt": "<run folder searched>", "ckpt_kind": "mole" | "supernet", "use_experts": bool, "metric": "loss" | "top1",
     "seed": int, "search_run": "<search run folder>", "evaluations": int,
     "members": [{"subnet": Subnet.to_dict(), "objectives": {"loss": float, "flops": float},
                  "loss": float | null, "top1": float | null, "flops_autoformer": int, "flops_macs": int,
                  "params": int, "latency_ms": float | null (measured only), "latency_predicted_ms": float | null,
                  "latency_source": "measured" | "predicted" | null,   # which of the two decided
                  "generation": int}, ...],               # sorted by the cost objective, ascending
     "single_objective_pick": <member> | null}          # what best.json holds: best fitness under the constraints

Every damaged or foreign file is refused by `read_pareto` with a one-line `ParetoFileError` (a ValueError: the
CLI prints it and exits 2) that names the file and what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taslora_core.atomic import atomic_write_json
from taslora_core.artifact_read import format_problem, read_json_artifact
from taslora_core.integrity import ArtifactError
from taslora_core.search.config import SearchError
from taslora_core.search.constraints import Constraints
from taslora_core.search.latency_verify import latency_source
from taslora_core.search.nsga import dominates
from taslora_core.search.objectives import COST_OBJECTIVES, LATENCY_TARGETS, QUALITY_OBJECTIVES, objective_vector
from taslora_core.space import SearchSpace, SpaceError
from taslora_core.subnet import Subnet, SubnetError

PARETO_FORMAT = "taslora-pareto"
PARETO_VERSION = 1
PARETO_JSON = "pareto.json"
PARETO_PNG = "pareto.png"
REQUIRED_KEYS = ("format", "version", "objectives", "target", "counter", "space", "constraints", "ckpt",
                 "ckpt_kind", "use_experts", "metric", "seed", "search_run", "evaluations", "members")
MEMBER_KEYS = ("subnet", "objectives", "flops_autoformer", "flops_macs", "params")
MEASURE_KEYS = ("loss", "top1", "flops_autoformer", "flops_macs", "params", "latency_ms", "latency_predicted_ms",
                "latency_source", "generation", "routing_entropy")
"""Record fields a member keeps (besides its subnet and objective values)."""


class ParetoFileError(SearchError):
    """A pareto.json that cannot be used (damaged, foreign, empty, or from another search space)."""


@dataclass
class ParetoMember:
    """One subnet of the front with its objective values and measures."""

    subnet: Subnet
    objectives: dict[str, float]
    loss: float | None = None
    top1: float | None = None
    flops_autoformer: float = 0.0
    flops_macs: float = 0.0
    params: int = 0
    latency_ms: float | None = None
    """Measured on the target (never a prediction)."""
    latency_predicted_ms: float | None = None
    """A latency model's prediction (`search --latency-model`), or None."""
    latency_source: str | None = None
    """Which latency decided: 'measured' (timed on the target), 'predicted' (the model's, not verified), or None."""
    generation: int | None = None
    routing_entropy: float | None = None

    def flops(self, counter: str) -> float:
        """FLOPs by `counter` ('autoformer' or 'macs')."""
        return float(self.flops_macs if counter == "macs" else self.flops_autoformer)

    def to_dict(self) -> dict[str, Any]:
        """The member's JSON form (the subnet with best.json's keys)."""
        return {"subnet": self.subnet.to_dict(), "objectives": dict(self.objectives),
                **{k: getattr(self, k) for k in MEASURE_KEYS}}

    @staticmethod
    def from_record(record: dict[str, Any], objectives: tuple[str, ...], counter: str) -> "ParetoMember":
        """A member from an evaluation record of the search (`EvolutionSearch.history`)."""
        values = objective_vector(record, objectives, counter)
        source = latency_source(record)
        return ParetoMember(
            subnet=Subnet.from_dict(record["subnet"]), objectives=dict(zip(objectives, values)),
            **{k: record.get(k) for k in MEASURE_KEYS if k != "latency_source"}, latency_source=source,
        )

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> "ParetoMember":
        """Inverse of to_dict (raises KeyError/TypeError/ValueError/SubnetError on a malformed member)."""
        return ParetoMember(subnet=Subnet.from_dict(doc["subnet"]),
                            objectives={str(k): float(v) for k, v in doc["objectives"].items()},
                            **{k: doc.get(k) for k in MEASURE_KEYS})


@dataclass
class ParetoFront:
    """A pareto.json in memory: the search's settings and its members (sorted by the cost objective)."""

    objectives: tuple[str, ...]
    space: SearchSpace
    constraints: Constraints
    members: list[ParetoMember]
    counter: str = "autoformer"
    target: str | None = None
    ckpt: str = ""
    ckpt_kind: str = "mole"
    use_experts: bool = True
    metric: str = "loss"
    seed: int = 0
    search_run: str = ""
    evaluations: int = 0
    single_objective_pick: ParetoMember | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields beyond the format's (e.g. the latency report); written and read back as they are."""
    path: Path | None = None
    """Where it was read from (None when built in memory)."""

    @property
    def cost(self) -> str:
        """The cost objective's name (flops, params or latency)."""
        return self.objectives[-1]

    def subnets(self) -> list[Subnet]:
        """The members' subnets, in the file's order (cost ascending)."""
        return [m.subnet for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        """The pareto.json document."""
        pick = self.single_objective_pick
        return {
            "format": PARETO_FORMAT, "version": PARETO_VERSION, "objectives": list(self.objectives),
            "target": self.target, "counter": self.counter, "space": self.space.to_dict(),
            "constraints": self.constraints.to_dict(), "ckpt": self.ckpt, "ckpt_kind": self.ckpt_kind,
            "use_experts": self.use_experts, "metric": self.metric, "seed": self.seed,
            "search_run": self.search_run, "evaluations": self.evaluations,
            "members": [m.to_dict() for m in self.members],
            "single_objective_pick": pick.to_dict() if pick is not None else None,
            **self.extra,
        }


def sort_members(members: list[ParetoMember], objectives: tuple[str, ...]) -> list[ParetoMember]:
    """Members by cost ascending (then quality, then subnet key: a total order)."""
    cost, quality = objectives[-1], objectives[0]
    return sorted(members, key=lambda m: (m.objectives[cost], m.objectives[quality], m.subnet.key()))


def write_pareto(path: str | Path, front: ParetoFront) -> Path:
    """Write `front` as pareto.json (atomically; members sorted by cost ascending); returns the path."""
    front.members = sort_members(front.members, front.objectives)
    return atomic_write_json(Path(path), front.to_dict())


def read_pareto(path: str | Path) -> ParetoFront:
    """Read and validate a pareto.json (a file, or a search run folder holding one).

    Raises ParetoFileError naming the file when it is missing, not JSON (or truncated), not a taslora pareto
    file, lacks keys, has no members, or holds members that are not valid subnets of its recorded space,
    lack an objective value, or dominate each other."""
    path = Path(path)
    if path.is_dir():
        path = path / PARETO_JSON
    if not path.is_file():
        raise ParetoFileError(f"{path} does not exist; pass the pareto.json written by `taslora search --pareto`")

    def bad(what: str) -> ParetoFileError:
        return ParetoFileError(f"{path}: {what}; re-run `taslora search --pareto` to write a new one")

    try:  # the checked reader: the sha256 its search's summary.json recorded, then the JSON
        doc = read_json_artifact(path, "Pareto front", "re-run `taslora search --pareto` to write a new one", expect=None)
    except ArtifactError as err:
        raise ParetoFileError(str(err)) from None
    problem = format_problem(doc, "pareto file", PARETO_FORMAT, PARETO_VERSION, REQUIRED_KEYS)
    if problem:
        raise bad(problem)
    objectives = _objectives(doc["objectives"], bad)
    if doc["target"] is not None and doc["target"] not in LATENCY_TARGETS:
        raise bad(f"unknown target {doc['target']!r}")
    try:
        space = SearchSpace.from_dict(doc["space"])
        constraints = Constraints.from_dict(doc["constraints"])
    except (SpaceError, SearchError, TypeError, AttributeError) as err:
        raise bad(f"bad space/constraints ({str(err).splitlines()[0]})") from None
    if not isinstance(doc["members"], list) or not doc["members"]:
        raise bad("the front is empty (no members)")
    members = [_member(m, i, objectives, space, bad) for i, m in enumerate(doc["members"])]
    for i, a in enumerate(members):
        for j, b in enumerate(members):
            if dominates(_vector(a, objectives), _vector(b, objectives)):
                raise bad(f"member {i} dominates member {j}: not a Pareto front")
    pick = doc.get("single_objective_pick")
    known = set(REQUIRED_KEYS) | {"single_objective_pick"}
    return ParetoFront(
        objectives=objectives, space=space, constraints=constraints, members=members, counter=str(doc["counter"]),
        target=doc["target"], ckpt=str(doc["ckpt"]), ckpt_kind=str(doc["ckpt_kind"]),
        use_experts=bool(doc["use_experts"]), metric=str(doc["metric"]), seed=int(doc["seed"]),
        search_run=str(doc["search_run"]), evaluations=int(doc["evaluations"]),
        single_objective_pick=_member(pick, "single_objective_pick", objectives, space, bad) if pick else None,
        extra={k: v for k, v in doc.items() if k not in known}, path=path,
    )


def check_same_space(front: ParetoFront, space: SearchSpace) -> None:
    """Raise ParetoFileError when `front` was searched in another space than `space` (e.g. the checkpoint an
    export uses): its subnets would not mean the same architectures."""
    if front.space != space:
        where = front.path or "the pareto file"
        raise ParetoFileError(
            f"{where} was searched in space '{front.space.name}', not in '{space.name}' of this checkpoint; "
            "use the checkpoint the search ran on (its 'ckpt' field) or search this one"
        )


def _objectives(value: Any, bad) -> tuple[str, ...]:
    if (not isinstance(value, list) or len(value) != 2 or value[0] not in QUALITY_OBJECTIVES
            or value[1] not in COST_OBJECTIVES):
        raise bad(f"bad objectives {value!r} (expected a quality objective then a cost objective, e.g. ['loss', 'flops'])")
    return tuple(value)


def _member(doc: Any, index: int | str, objectives: tuple[str, ...], space: SearchSpace, bad) -> ParetoMember:
    if not isinstance(doc, dict):
        raise bad(f"member {index} is not an object")
    missing = [k for k in MEMBER_KEYS if k not in doc]
    if missing:
        raise bad(f"member {index} lacks {', '.join(missing)}")
    try:
        member = ParetoMember.from_dict(doc)
        member.subnet.check_in_space(space)
    except SubnetError as err:
        raise bad(f"member {index} is not a subnet of the recorded space '{space.name}' ({err})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise bad(f"member {index} is malformed ({type(err).__name__}: {err})") from None
    lacking = [o for o in objectives if o not in member.objectives or math.isnan(member.objectives[o])]
    if lacking:
        raise bad(f"member {index} lacks a value for objective {', '.join(lacking)}")
    return member


def _vector(member: ParetoMember, objectives: tuple[str, ...]) -> tuple[float, ...]:
    return tuple(member.objectives[o] for o in objectives)
