"""Evolutionary architecture search under FLOPs/params bounds (AutoFormer's evolution, TAS-LoRA's defaults).

The evolution knows nothing about models: it is given a `fitness_fn(subnet) -> dict` with at least a
`"fitness"` entry, **lower is better** (the model-based fitness lives in `taslora_core.search_fitness`).
Everything else follows AutoFormer's `evolution.py` (`reference/autoformer.md` section 5):

- a candidate is the flat tuple `Subnet.key()` = (depth, ratio_1..d, heads_1..d, embed);
- generation 0 is `population` random legal subnets; each iteration then merges the population into the
  top-`parents`, builds `mutation_num` mutants and `crossover_num` crossovers from the top-k, and fills
  the population up with random legal subnets; mutation/crossover attempts are capped at 10x their count;
- legal = inside the search space, within the constraints, and never evaluated before (so no subnet is
  ever evaluated twice, and a constraint-violating subnet is never evaluated at all).

Differences from AutoFormer, on purpose:
- the last generation is merged into the top-k before the best is picked (AutoFormer's loop merges at the
  start of an iteration, so its final generation is evaluated but never ranked);
- crossover skips a pair whose depths still differ after 50 redraws (AutoFormer would zip them into a
  malformed tuple);
- random filling is capped (`random_max_tries` draws per fill) so a feasible-but-tiny region cannot hang
  the search: the population is then smaller, and a note says so;
- all randomness comes from one `random.Random(seed)`, never from global state; the state (population,
  top-k, every evaluation, the RNG state) is saved atomically after every generation and a resumed run
  gives exactly the result of an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from taslora_core import complexity
from taslora_core.checkpoint import atomic_write_json
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, sample_subnet, smallest_subnet

STATE_FORMAT = "taslora-search-state"
STATE_VERSION = 1
METRICS = ("loss", "top1")

FitnessFn = Callable[[Subnet], dict[str, Any]]
Record = dict[str, Any]


class SearchError(ValueError):
    """Bad search settings or a search state that cannot be resumed."""


class InfeasibleConstraints(SearchError):
    """No subnet of the search space satisfies the constraints."""


# ---------------------------------------------------------------------------------------------- config
@dataclass
class SearchConfig:
    """All search options. Defaults are the paper's (population 50, 20 iterations, top-10 parents, ...)."""

    population: int = 50
    iterations: int = 20
    parents: int = 10
    mutation_num: int | None = None
    """Mutants per generation; None means population // 2 (AutoFormer: 25 of 50)."""
    crossover_num: int | None = None
    """Crossover children per generation; None means population // 2."""
    m_prob: float = 0.2
    s_prob: float = 0.4
    seed: int = 0
    random_max_tries: int = 10000
    """Cap on random draws per population fill (guards feasible-but-tiny regions)."""
    crossover_pair_tries: int = 50
    """AutoFormer's redraws for two parents of equal depth."""
    # Fitness (used by the model-based fitness; the evolution itself only reads 'fitness').
    metric: str = "loss"
    val_subset: int | None = None
    batch_size: int = 256
    use_experts: bool = True

    def __post_init__(self) -> None:
        for name in ("mutation_num", "crossover_num"):
            if getattr(self, name) is None:
                setattr(self, name, int(self.population) // 2)
        for name in ("population", "parents", "random_max_tries", "crossover_pair_tries", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise SearchError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("iterations", "mutation_num", "crossover_num"):
            if int(getattr(self, name)) < 0:
                raise SearchError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("m_prob", "s_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise SearchError(f"{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.metric not in METRICS:
            raise SearchError(f"unknown metric '{self.metric}'; choose one of {', '.join(METRICS)}")
        if self.val_subset is not None and self.val_subset < 1:
            raise SearchError(f"val-subset must be positive, got {self.val_subset}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> "SearchConfig":
        """Inverse of to_dict (unknown keys are ignored)."""
        known = {f.name for f in fields(SearchConfig)}
        return SearchConfig(**{k: v for k, v in doc.items() if k in known})

    # Fields that decide which subnets get evaluated: a resumed run must use the saved values.
    EVOLUTION_FIELDS = (
        "population", "parents", "mutation_num", "crossover_num", "m_prob", "s_prob", "seed",
        "random_max_tries", "crossover_pair_tries", "metric", "val_subset", "use_experts",
    )


# ---------------------------------------------------------------------------------------------- constraints
@lru_cache(maxsize=1 << 16)
def _flops_cached(space: SearchSpace, subnet: Subnet, counter: str) -> float:
    return complexity.flops(space, subnet, counter)


@lru_cache(maxsize=1 << 16)
def _params_cached(space: SearchSpace, subnet: Subnet) -> int:
    return complexity.params(space, subnet)


def measure(space: SearchSpace, subnet: Subnet) -> dict[str, float]:
    """FLOPs with both counters and params of a subnet (cached)."""
    return {
        "flops_autoformer": _flops_cached(space, subnet, "autoformer"),
        "flops_macs": _flops_cached(space, subnet, "macs"),
        "params": _params_cached(space, subnet),
    }


@dataclass(frozen=True)
class Constraints:
    """Upper/lower bounds on FLOPs (per image, by `counter`) and params. `None` = unbounded."""

    flops_max: float | None = None
    flops_min: float | None = None
    params_max: float | None = None
    params_min: float | None = None
    counter: str = "autoformer"
    latency_max_ms: float | None = None
    latency_target: str | None = None
    latency_fn: Callable[[Subnet], float] | None = field(default=None, compare=False, repr=False)
    """Measured latency (ms) of a subnet on `latency_target`; needed when `latency_max_ms` is set. It is only
    called for subnets that pass the FLOPs/params bounds (those are cheap, a measurement is not)."""

    def __post_init__(self) -> None:
        if self.counter not in complexity.COUNTERS:
            raise SearchError(f"unknown FLOPs counter '{self.counter}'; choose one of {', '.join(complexity.COUNTERS)}")
        for name in ("flops_max", "flops_min", "params_max", "params_min", "latency_max_ms"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(float(value)) or float(value) < 0):
                raise SearchError(f"{name.replace('_', ' ')} must be a non-negative number, got {value}")
        for what in ("flops", "params"):
            lo, hi = getattr(self, f"{what}_min"), getattr(self, f"{what}_max")
            if lo is not None and hi is not None and lo > hi:
                raise SearchError(
                    f"--min-{what} {complexity.format_amount(lo)} exceeds --{what} {complexity.format_amount(hi)}; "
                    "swap or fix the bounds"
                )

    @property
    def bounded(self) -> bool:
        """True when at least one bound is set."""
        return any(v is not None for v in (self.flops_max, self.flops_min, self.params_max, self.params_min,
                                           self.latency_max_ms))

    def latency_of(self, subnet: Subnet) -> float:
        """Measured latency (ms) via `latency_fn`."""
        if self.latency_fn is None:
            raise SearchError("a latency bound needs a latency_fn (a measured-latency lookup) in the Constraints")
        return float(self.latency_fn(subnet))

    def cheap_satisfied(self, space: SearchSpace, subnet: Subnet) -> bool:
        """The FLOPs and params bounds only (no latency measurement)."""
        return Constraints.satisfied(self._without_latency(), space, subnet)

    def _without_latency(self) -> "Constraints":
        return Constraints(self.flops_max, self.flops_min, self.params_max, self.params_min, self.counter)

    def flops_of(self, space: SearchSpace, subnet: Subnet) -> float:
        """FLOPs of `subnet` by this constraint's counter."""
        return _flops_cached(space, subnet, self.counter)

    def satisfied(self, space: SearchSpace, subnet: Subnet) -> bool:
        """True when `subnet` fits every bound (FLOPs checked first: it is the cheaper count)."""
        if self.flops_max is not None or self.flops_min is not None:
            f = self.flops_of(space, subnet)
            if (self.flops_max is not None and f > self.flops_max) or (self.flops_min is not None and f < self.flops_min):
                return False
        if self.params_max is not None or self.params_min is not None:
            p = _params_cached(space, subnet)
            if (self.params_max is not None and p > self.params_max) or (self.params_min is not None and p < self.params_min):
                return False
        if self.latency_max_ms is not None:
            return self.latency_of(subnet) <= self.latency_max_ms
        return True

    def extra_measures(self, subnet: Subnet) -> dict[str, float]:
        """Measures beyond FLOPs/params recorded with each evaluation (the latency, when bounded by it)."""
        if self.latency_max_ms is None:
            return {}
        return {"latency_ms": self.latency_of(subnet)}

    def feasible_range(self, space: SearchSpace) -> dict[str, Any]:
        """The FLOPs (by `counter`) and params span of the space: its smallest and largest subnet.

        Every count grows with each choice (depth, embed, heads, ratio), so these two subnets bound all others.
        """
        lo, hi = smallest_subnet(space), largest_subnet(space)
        out: dict[str, Any] = {
            "counter": self.counter,
            "flops": (self.flops_of(space, lo), self.flops_of(space, hi)),
            "params": (_params_cached(space, lo), _params_cached(space, hi)),
        }
        if self.latency_max_ms is not None and self.latency_fn is not None:
            out["latency_ms"] = (self.latency_of(lo), self.latency_of(hi))
        return out

    def find_feasible(self, space: SearchSpace, tries: int = 2000, seed: int = 0, latency_tries: int = 20) -> Subnet | None:
        """A subnet that satisfies all bounds: the smallest, the largest, or one of `tries` random ones
        (of which at most `latency_tries` that pass the cheap bounds get a latency measurement)."""
        rng = random.Random(seed)  # its own generator: the check never shifts the search's random stream
        candidates = [smallest_subnet(space), largest_subnet(space)] + [sample_subnet(space, rng) for _ in range(tries)]
        measured = 0
        for subnet in candidates:
            if not self.cheap_satisfied(space, subnet):
                continue
            if self.latency_max_ms is None:
                return subnet
            if measured >= latency_tries:
                return None
            measured += 1
            if self.latency_of(subnet) <= self.latency_max_ms:
                return subnet
        return None

    def check_feasible(self, space: SearchSpace, tries: int = 2000) -> Subnet:
        """Return a witness subnet, or raise InfeasibleConstraints with a one-line message giving the range."""
        found = self.find_feasible(space, tries)
        if found is None:
            raise InfeasibleConstraints(
                f"no subnet of search space '{space.name}' satisfies {self.describe()}; "
                f"{self.describe_range(space)}; relax the bounds"
            )
        return found

    def describe(self) -> str:
        """'FLOPs (autoformer) <= 1.300G, params >= 5.000M' or 'no constraints'."""
        fa = complexity.format_amount
        parts = []
        if self.flops_min is not None:
            parts.append(f"FLOPs ({self.counter}) >= {fa(self.flops_min)}")
        if self.flops_max is not None:
            parts.append(f"FLOPs ({self.counter}) <= {fa(self.flops_max)}")
        if self.params_min is not None:
            parts.append(f"params >= {fa(self.params_min)}")
        if self.params_max is not None:
            parts.append(f"params <= {fa(self.params_max)}")
        if self.latency_max_ms is not None:
            parts.append(f"latency ({self.latency_target or 'measured'}, batch 1) <= {self.latency_max_ms:g} ms")
        return ", ".join(parts) if parts else "no constraints"

    def describe_range(self, space: SearchSpace) -> str:
        """'the space spans FLOPs (autoformer) 8.284M .. 31.623M and params 147.210K .. 579.850K'."""
        r = self.feasible_range(space)
        fa = complexity.format_amount
        text = (
            f"the space spans FLOPs ({self.counter}) {fa(r['flops'][0])} .. {fa(r['flops'][1])} "
            f"and params {fa(r['params'][0])} .. {fa(r['params'][1])}"
        )
        if "latency_ms" in r:
            text += f" and latency {r['latency_ms'][0]:.3g} .. {r['latency_ms'][1]:.3g} ms ({self.latency_target})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON form (without the latency lookup function)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "latency_fn"}

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> "Constraints":
        """Inverse of to_dict."""
        known = {f.name for f in fields(Constraints)}
        return Constraints(**{k: v for k, v in doc.items() if k in known})


# ---------------------------------------------------------------------------------------------- encoding
def subnet_from_key(key: Sequence[Any]) -> Subnet:
    """Decode AutoFormer's flat candidate tuple (depth, ratios..., heads..., embed)."""
    depth = int(key[0])
    if len(key) != 2 * depth + 2:
        raise SearchError(f"candidate {tuple(key)} has {len(key)} genes; depth {depth} needs {2 * depth + 2}")
    return Subnet(
        embed_dim=int(key[-1]), depth=depth,
        mlp_ratios=tuple(float(r) for r in key[1:1 + depth]),
        num_heads=tuple(int(h) for h in key[1 + depth:1 + 2 * depth]),
    )


def mutate(space: SearchSpace, parent: Subnet, rng: random.Random, m_prob: float, s_prob: float) -> Subnet:
    """AutoFormer's mutation: depth (s_prob; extend with random genes or truncate), each ratio (m_prob),
    each head count (m_prob), then the embed dim (s_prob)."""
    depth = parent.depth
    ratios, heads = list(parent.mlp_ratios), list(parent.num_heads)
    if rng.random() < s_prob:
        new_depth = rng.choice(space.depths)
        if new_depth > depth:
            extra = new_depth - depth
            ratios += [rng.choice(space.mlp_ratios) for _ in range(extra)]
            heads += [rng.choice(space.num_heads) for _ in range(extra)]
        else:
            ratios, heads = ratios[:new_depth], heads[:new_depth]
        depth = new_depth
    for i in range(depth):
        if rng.random() < m_prob:
            ratios[i] = rng.choice(space.mlp_ratios)
    for i in range(depth):
        if rng.random() < m_prob:
            heads[i] = rng.choice(space.num_heads)
    embed = parent.embed_dim
    if rng.random() < s_prob:
        embed = rng.choice(space.embed_dims)
    return Subnet(embed_dim=embed, depth=depth, mlp_ratios=tuple(ratios), num_heads=tuple(heads))


def crossover(p1: Subnet, p2: Subnet, rng: random.Random) -> Subnet:
    """Uniform crossover of two parents of equal depth: each gene of the flat tuple 50/50 from either."""
    if p1.depth != p2.depth:
        raise SearchError(f"crossover needs parents of equal depth, got {p1.depth} and {p2.depth}")
    genes = [a if rng.random() < 0.5 else b for a, b in zip(p1.key(), p2.key())]
    return subnet_from_key(genes)


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(doc: list) -> tuple:
    version, internal, gauss = doc
    return (version, tuple(internal), gauss)


def _sort_value(record: Record) -> float:
    value = float(record["fitness"])
    return value if not math.isnan(value) else math.inf  # NaN never wins and keeps the order total


# ---------------------------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    """The outcome: the best record, every evaluation in order, and the final top-k (best first)."""

    best: Record
    history: list[Record]
    topk: list[Record]
    generations: int
    notes: list[str] = field(default_factory=list)

    def top(self, n: int = 10) -> list[Record]:
        """The n best evaluated subnets, best first (ties broken by the candidate tuple)."""
        return sorted(self.history, key=lambda r: (_sort_value(r), tuple(r["key"])))[:n]


class EvolutionSearch:
    """AutoFormer's evolution with an injected fitness (lower is better).

    `fitness_fn(subnet)` is called once per unique, in-space, constraint-satisfying subnet; its dict is
    stored in the history record together with generation, subnet, key, FLOPs (both counters) and params.
    """

    def __init__(
        self,
        space: SearchSpace,
        fitness_fn: FitnessFn,
        constraints: Constraints | None = None,
        config: SearchConfig | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.space, self.fitness_fn = space, fitness_fn
        self.constraints = constraints or Constraints()
        self.config = config or SearchConfig()
        self.log = log or (lambda message: None)
        self.rng = random.Random(self.config.seed)
        self.history: list[Record] = []
        self.cache: dict[tuple, Record] = {}
        self.pending: dict[tuple, Record] = {}  # evaluations of an interrupted generation, reused on resume
        self.population: list[tuple] = []
        self.topk: list[tuple] = []
        self.next_iteration = 0
        self.started = False
        self.notes: list[str] = []
        self._rng_saved = self.rng.getstate()  # RNG state at the last save (what a partial save records)
        self._notes_saved = 0

    # ------------------------------------------------------------------ legality and evaluation
    def legal(self, subnet: Subnet, taken: set[tuple] | None = None) -> bool:
        """In the search space, within the constraints, not evaluated and not already taken this generation."""
        key = subnet.key()
        if key in self.cache or (taken is not None and key in taken):
            return False
        return subnet.in_space(self.space) and self.constraints.satisfied(self.space, subnet)

    def _evaluate(self, subnet: Subnet, generation: int) -> Record:
        key = subnet.key()
        if key in self.cache:  # never evaluate twice (legal() already excludes it; this is the safety net)
            return self.cache[key]
        if not self.constraints.satisfied(self.space, subnet):  # pragma: no cover - legal() guarantees this
            raise AssertionError(f"refusing to evaluate {subnet.to_dict()}: it violates {self.constraints.describe()}")
        if key in self.pending:
            result = self.pending.pop(key)
        else:
            out = self.fitness_fn(subnet)
            if "fitness" not in out:
                raise SearchError("fitness_fn must return a dict with a 'fitness' entry (lower is better)")
            result = {k: v for k, v in out.items() if k not in ("generation", "subnet", "key")}
            result["fitness"] = float(result["fitness"])
        record: Record = {
            "generation": generation,
            "index": len(self.history),
            "subnet": subnet.to_dict(),
            "key": list(key),
            **result,
            **measure(self.space, subnet),
            **self.constraints.extra_measures(subnet),
        }
        self.cache[key] = record
        self.history.append(record)
        return record

    def _evaluate_all(self, subnets: list[Subnet], generation: int) -> None:
        for subnet in subnets:
            self._evaluate(subnet, generation)

    # ------------------------------------------------------------------ candidate generation
    def random_fill(self, num: int, taken: set[tuple]) -> list[Subnet]:
        """Up to `num` new random legal subnets (capped at `random_max_tries` draws)."""
        out: list[Subnet] = []
        tries = 0
        while len(out) < num and tries < self.config.random_max_tries:
            tries += 1
            subnet = sample_subnet(self.space, self.rng)
            if self.legal(subnet, taken):
                taken.add(subnet.key())
                out.append(subnet)
        if len(out) < num:
            self._note(
                f"random sampling found only {len(out)} of {num} new subnets within the constraints after "
                f"{tries} draws (the feasible region is small or exhausted); continuing with a smaller population"
            )
        return out

    def mutation(self, taken: set[tuple]) -> list[Subnet]:
        """Up to `mutation_num` legal mutants of top-k parents (at most 10x that many attempts)."""
        cfg = self.config
        out: list[Subnet] = []
        attempts = cfg.mutation_num * 10
        while len(out) < cfg.mutation_num and attempts > 0 and self.topk:
            attempts -= 1
            parent = subnet_from_key(self.rng.choice(self.topk))
            child = mutate(self.space, parent, self.rng, cfg.m_prob, cfg.s_prob)
            if self.legal(child, taken):
                taken.add(child.key())
                out.append(child)
        return out

    def crossover(self, taken: set[tuple]) -> list[Subnet]:
        """Up to `crossover_num` legal children of equal-depth top-k pairs (at most 10x that many attempts)."""
        cfg = self.config
        out: list[Subnet] = []
        attempts = cfg.crossover_num * 10
        while len(out) < cfg.crossover_num and attempts > 0 and self.topk:
            attempts -= 1
            p1, p2 = self.rng.choice(self.topk), self.rng.choice(self.topk)
            redraws = cfg.crossover_pair_tries
            while len(p1) != len(p2) and redraws > 0:
                redraws -= 1
                p1, p2 = self.rng.choice(self.topk), self.rng.choice(self.topk)
            if len(p1) != len(p2):
                continue  # AutoFormer would zip unequal parents into a malformed child; skip the pair instead
            child = crossover(subnet_from_key(p1), subnet_from_key(p2), self.rng)
            if self.legal(child, taken):
                taken.add(child.key())
                out.append(child)
        return out

    def merge_topk(self, current: list[tuple], population: list[tuple], k: int | None = None) -> list[tuple]:
        """Merge population into the running top-k: sort by fitness (then key, for determinism), keep k."""
        k = k or self.config.parents
        merged = list(dict.fromkeys([*current, *population]))
        merged.sort(key=lambda key: (_sort_value(self.cache[key]), key))
        return merged[:k]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the last finished generation left off."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "space": self.space.to_dict(),
            "config": self.config.to_dict(),
            "constraints": self.constraints.to_dict(),
            "started": self.started,
            "next_iteration": self.next_iteration,
            "population": [list(k) for k in self.population],
            "topk": [list(k) for k in self.topk],
            "history": self.history,
            "pending": list(self.pending.values()),
            "rng": _rng_to_json(self.rng.getstate()),
            "notes": self.notes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by `state_dict`; raises SearchError when it belongs to another search."""
        if state.get("format") != STATE_FORMAT or int(state.get("version", 0)) != STATE_VERSION:
            raise SearchError("not a taslora search state (format/version mismatch); start a new search")
        saved_space = SearchSpace.from_dict(state["space"])
        if saved_space != self.space:
            raise SearchError(f"the saved search ran in space '{saved_space.name}', not '{self.space.name}'; resume it with its checkpoint")
        saved_cfg = state["config"]
        diffs = [f for f in SearchConfig.EVOLUTION_FIELDS if saved_cfg.get(f) != getattr(self.config, f)]
        if diffs:
            shown = ", ".join(f"{f}={saved_cfg.get(f)!r} (now {getattr(self.config, f)!r})" for f in diffs)
            raise SearchError(f"cannot resume: the saved search used {shown}; resume with the saved settings")
        if Constraints.from_dict(state["constraints"]) != self.constraints:
            raise SearchError(
                f"cannot resume: the saved search used {Constraints.from_dict(state['constraints']).describe()}, "
                f"not {self.constraints.describe()}"
            )
        if int(state["next_iteration"]) > self.config.iterations:
            raise SearchError(
                f"cannot resume: the saved search already ran {state['next_iteration']} iterations, more than "
                f"--iterations {self.config.iterations}"
            )
        self.history = [dict(r) for r in state["history"]]
        self.cache = {tuple(r["key"]): r for r in self.history}
        self.pending = {tuple(r["key"]): {k: v for k, v in r.items() if k not in ("generation", "index", "subnet", "key")}
                        for r in state.get("pending", [])}
        self.population = [tuple(k) for k in state["population"]]
        self.topk = [tuple(k) for k in state["topk"]]
        self.next_iteration = int(state["next_iteration"])
        self.rng.setstate(_rng_from_json(state["rng"]))
        self.notes = list(state.get("notes", []))
        self.started = bool(state.get("started", True))
        self._rng_saved, self._notes_saved = self.rng.getstate(), len(self.notes)

    def _save(self, state_path: Path | None) -> None:
        self._rng_saved, self._notes_saved = self.rng.getstate(), len(self.notes)
        if state_path is not None:
            atomic_write_json(state_path, self.state_dict())

    def _note(self, message: str) -> None:
        self.notes.append(message)
        self.log(message)

    # ------------------------------------------------------------------ loop
    def run(
        self,
        state_path: str | Path | None = None,
        on_generation: Callable[[dict[str, Any]], None] | None = None,
        resume: bool | dict[str, Any] = True,
        save: bool = True,
    ) -> SearchResult:
        """Run (or continue) the search and return the result.

        state_path: written atomically after every generation (when `save`); when it exists and `resume` is
        True the search continues from it. `resume` may also be a state dict already read (DDP ranks read it
        once, then only rank 0 writes). An exception (e.g. Ctrl-C) mid-generation saves the finished
        evaluations of that generation as 'pending' so that a resume reuses them instead of re-evaluating.
        """
        path = Path(state_path) if state_path is not None else None
        if isinstance(resume, dict):
            self.load_state_dict(resume)
        elif resume and path is not None and path.exists():
            from json import loads

            self.load_state_dict(loads(path.read_text()))
        target = path if save else None
        cfg = self.config
        try:
            if not self.started:
                taken: set[tuple] = set()
                population = self.random_fill(cfg.population, taken)
                if len(population) < cfg.population:  # tiny region: make sure a known feasible subnet is in
                    for witness in (smallest_subnet(self.space), largest_subnet(self.space)):
                        if len(population) < cfg.population and self.legal(witness, taken):
                            taken.add(witness.key())
                            population.append(witness)
                if not population:
                    raise InfeasibleConstraints(
                        f"found no subnet of search space '{self.space.name}' that satisfies "
                        f"{self.constraints.describe()}; {self.constraints.describe_range(self.space)}"
                    )
                self._evaluate_all(population, 0)
                self.population = [s.key() for s in population]
                self.started = True
                self._save(target)
                self._report(on_generation, 0)
            while self.next_iteration < cfg.iterations:
                self.topk = self.merge_topk(self.topk, self.population)
                generation = self.next_iteration + 1
                taken = set()
                mutants = self.mutation(taken)
                children = self.crossover(taken)
                randoms = self.random_fill(max(cfg.population - len(mutants) - len(children), 0), taken)
                population = mutants + children + randoms
                self._evaluate_all(population, generation)
                self.population = [s.key() for s in population]
                self.next_iteration += 1
                self._save(target)
                self._report(on_generation, generation)
        except BaseException:
            # Keep the finished evaluations of the unfinished generation for the resume.
            if target is not None and any(r["generation"] > self._last_saved_generation() for r in self.history):
                self._save_partial(target)
            raise
        # AutoFormer merges the population into the top-k at the start of each iteration, so its last
        # generation is evaluated but never ranked (off by one). We merge it before picking the best.
        final = self.merge_topk(self.topk, self.population)
        top = [self.cache[k] for k in final]
        return SearchResult(best=top[0], history=list(self.history), topk=top, generations=self.next_iteration,
                            notes=list(self.notes))

    def _last_saved_generation(self) -> int:
        """Generation of the last saved state (-1 before generation 0 finished)."""
        return self.next_iteration if self.started else -1

    def _save_partial(self, path: Path) -> None:
        """State of the last finished generation plus the evaluations already done after it (as 'pending').

        The population and RNG state are those of the last save, so the resumed run regenerates the same
        candidates and finds their results in 'pending'. (The top-k may already hold the merge that starts
        the unfinished iteration; merging is idempotent, so the resume merges to the same list.)
        """
        last = self._last_saved_generation()
        state = self.state_dict()
        state["history"] = [r for r in self.history if r["generation"] <= last]
        state["pending"] = [*state["pending"], *(r for r in self.history if r["generation"] > last)]
        state["rng"] = _rng_to_json(self._rng_saved)
        state["notes"] = self.notes[: self._notes_saved]
        atomic_write_json(path, state)

    def _report(self, on_generation: Callable[[dict[str, Any]], None] | None, generation: int) -> None:
        if on_generation is None:
            return
        pop = [self.cache[k] for k in self.population]
        values = [_sort_value(r) for r in pop]
        best_key = self.merge_topk(self.topk, self.population, 1)
        on_generation({
            "generation": generation,
            "iterations": self.config.iterations,
            "population": pop,
            "population_size": len(pop),
            "evaluated": len(self.history),
            "pop_best": min(values) if values else math.nan,
            "pop_median": statistics.median(values) if values else math.nan,
            "best": self.cache[best_key[0]] if best_key else None,
        })


# ---------------------------------------------------------------------------------------------- baseline
def random_search(
    space: SearchSpace, fitness_fn: FitnessFn, constraints: Constraints, num: int, seed: int = 0,
    max_tries: int = 100000,
) -> list[Record]:
    """Baseline: evaluate `num` distinct random subnets that satisfy the constraints; records in order."""
    search = EvolutionSearch(space, fitness_fn, constraints, SearchConfig(seed=seed, population=max(num, 1),
                                                                            random_max_tries=max_tries))
    subnets = search.random_fill(num, set())
    search._evaluate_all(subnets, 0)
    return search.history
