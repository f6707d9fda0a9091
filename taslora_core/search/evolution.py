"""Evolutionary architecture search under FLOPs/params bounds (AutoFormer's evolution, TAS-LoRA's defaults).

The evolution knows nothing about models: it is given a `fitness_fn(subnet) -> dict` with at least a
`"fitness"` entry, **lower is better** (the model-based fitness lives in `taslora_core.search.fitness`).
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
- with `config.objectives` (a Pareto search) the parents are chosen by NSGA-II (non-dominated sorting, then
  crowding distance: `search.nsga`) instead of the top-k by fitness; the operators, the random filling, the
  state and the resume are the same, and the result adds the non-dominated set of every evaluation (`front`);
- all randomness comes from one `random.Random(seed)`, never from global state; the state (population,
  top-k, every evaluation, the RNG state) is saved atomically after every generation and a resumed run
  gives exactly the result of an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taslora_core.atomic import atomic_write_json
from taslora_core.search.config import InfeasibleConstraints, SearchConfig, SearchError
from taslora_core.search.constraints import Constraints
from taslora_core.search.measures import measure
from taslora_core.search.messages import describe, describe_range
from taslora_core.search.nsga import nsga_select, pareto_indices
from taslora_core.search.objectives import objective_vector
from taslora_core.search.operators import crossover, mutate, subnet_from_key
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, largest_subnet, sample_distinct, smallest_subnet

STATE_FORMAT = "taslora-search-state"
STATE_VERSION = 1

FitnessFn = Callable[[Subnet], dict[str, Any]]
Record = dict[str, Any]


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(doc: list) -> tuple:
    version, internal, gauss = doc
    return (version, tuple(internal), gauss)


def _sort_value(record: Record) -> float:
    value = float(record["fitness"])
    return value if not math.isnan(value) else math.inf  # NaN never wins and keeps the order total


@dataclass
class SearchResult:
    """The outcome: the best record, every evaluation in order, and the final top-k (best first)."""

    best: Record
    history: list[Record]
    topk: list[Record]
    generations: int
    notes: list[str] = field(default_factory=list)
    front: list[Record] = field(default_factory=list)
    """Pareto search only: the non-dominated evaluations (by `objectives`), cost ascending."""
    objectives: tuple[str, ...] | None = None

    def top(self, n: int = 10) -> list[Record]:
        """The n best evaluated subnets, best first (ties broken by the candidate tuple)."""
        return sorted(self.history, key=lambda r: (_sort_value(r), tuple(r["key"])))[:n]


class EvolutionSearch:
    """AutoFormer's evolution with an injected fitness (lower is better).

    `fitness_fn(subnet)` is called once per unique, in-space, constraint-satisfying subnet; its dict is
    stored in the history record together with generation, subnet, key, FLOPs (both counters) and params.
    With `config.objectives` the parents are selected by NSGA-II on those objectives (a 'latency' objective
    reads the record's `latency_ms`, which the fitness or the constraints' latency lookup must provide).
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
        self.objectives: tuple[str, ...] | None = tuple(self.config.objectives) if self.config.objectives else None
        self.history: list[Record] = []
        self.cache: dict[tuple, Record] = {}
        self.pending: dict[tuple, Record] = {}  # evaluations of an interrupted generation, reused on resume
        self.population: list[tuple] = []
        self.topk: list[tuple] = []
        self.next_iteration = 0
        self.started = False
        self.notes: list[str] = []
        self._rng_saved = self.rng.getstate()  # RNG state at the last save (what a partial save records)
        self._topk_saved: list[tuple] = []  # parents at the last save (NSGA-II's merge is not idempotent)
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
            raise AssertionError(f"refusing to evaluate {subnet.to_dict()}: it violates {describe(self.constraints)}")
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

    def evaluate_all(self, subnets: list[Subnet], generation: int) -> None:
        """Evaluate each subnet (once ever) as part of `generation`."""
        for subnet in subnets:
            self._evaluate(subnet, generation)

    # ------------------------------------------------------------------ candidate generation
    def random_fill(self, num: int, taken: set[tuple]) -> list[Subnet]:
        """Up to `num` new random legal subnets (capped at `random_max_tries` draws)."""
        tries = self.config.random_max_tries
        out = sample_distinct(self.space, num, self.rng, taken=taken, accept=self.legal, max_tries=tries)
        if len(out) < num:  # the draws ran out (the sampler stops early only when it has `num`)
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
        """Merge population into the running parents and keep k: the top-k by fitness (then key, for
        determinism), or in a Pareto search NSGA-II's k survivors (front, then crowding distance, then key)."""
        k = k or self.config.parents
        merged = list(dict.fromkeys([*current, *population]))
        if self.objectives is not None:
            merged.sort()  # NSGA-II's crowding depends on the set only, never on the order it arrived in
            points = [self.objective_point(key) for key in merged]
            return [merged[i] for i in nsga_select(points, k, tiebreak=merged)]
        merged.sort(key=lambda key: (_sort_value(self.cache[key]), key))
        return merged[:k]

    def objective_point(self, key: tuple) -> tuple[float, ...]:
        """The objective vector (all minimised) of an evaluated candidate."""
        assert self.objectives is not None
        return objective_vector(self.cache[key], self.objectives, self.constraints.counter)

    def front(self) -> list[Record]:
        """The non-dominated evaluations so far (Pareto search), cost ascending (then quality, then key)."""
        if self.objectives is None or not self.history:
            return []
        points = [objective_vector(r, self.objectives, self.constraints.counter) for r in self.history]
        members = [(points[i], tuple(self.history[i]["key"]), self.history[i]) for i in pareto_indices(points)]
        members.sort(key=lambda m: (m[0][::-1], m[1]))
        return [m[2] for m in members]

    def best_record(self) -> Record:
        """The single-objective pick: the lowest fitness evaluated so far (ties broken by the candidate tuple)."""
        return min(self.history, key=lambda r: (_sort_value(r), tuple(r["key"])))

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
                f"cannot resume: the saved search used {describe(Constraints.from_dict(state['constraints']))}, "
                f"not {describe(self.constraints)}"
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
        self._topk_saved = list(self.topk)

    def _save(self, state_path: Path | None) -> None:
        self._rng_saved, self._notes_saved = self.rng.getstate(), len(self.notes)
        self._topk_saved = list(self.topk)
        if state_path is not None:
            atomic_write_json(state_path, self.state_dict())

    def _note(self, message: str) -> None:
        self.notes.append(message)
        self.log(message)

    def add_note(self, message: str) -> None:
        """Record (and log) a note for the result, e.g. a bound that does not bind; saved with the state."""
        self._note(message)

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
                        f"{describe(self.constraints)}; {describe_range(self.constraints, self.space)}"
                    )
                self.evaluate_all(population, 0)
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
                self.evaluate_all(population, generation)
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
        return SearchResult(best=self.best_record(), history=list(self.history), topk=top,
                            generations=self.next_iteration, notes=list(self.notes), front=self.front(),
                            objectives=self.objectives)

    def _last_saved_generation(self) -> int:
        """Generation of the last saved state (-1 before generation 0 finished)."""
        return self.next_iteration if self.started else -1

    def _save_partial(self, path: Path) -> None:
        """State of the last finished generation plus the evaluations already done after it (as 'pending').

        The population, parents and RNG state are those of the last save, so the resumed run regenerates the
        same candidates and finds their results in 'pending'. (The parents are saved as they were before the
        merge that starts the unfinished iteration: re-merging the top-k by fitness would give the same list,
        but NSGA-II's crowding distance depends on the whole merged set.)
        """
        last = self._last_saved_generation()
        state = self.state_dict()
        state["history"] = [r for r in self.history if r["generation"] <= last]
        state["pending"] = [*state["pending"], *(r for r in self.history if r["generation"] > last)]
        state["rng"] = _rng_to_json(self._rng_saved)
        state["topk"] = [list(k) for k in self._topk_saved]
        state["notes"] = self.notes[: self._notes_saved]
        atomic_write_json(path, state)

    def _report(self, on_generation: Callable[[dict[str, Any]], None] | None, generation: int) -> None:
        if on_generation is None:
            return
        pop = [self.cache[k] for k in self.population]
        values = [_sort_value(r) for r in pop]
        on_generation({
            "generation": generation,
            "iterations": self.config.iterations,
            "population": pop,
            "population_size": len(pop),
            "evaluated": len(self.history),
            "pop_best": min(values) if values else math.nan,
            "pop_median": statistics.median(values) if values else math.nan,
            "best": self.best_record() if self.history else None,
            **({"front_size": len(self.front())} if self.objectives is not None else {}),
        })
