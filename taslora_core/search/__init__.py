"""Architecture search: AutoFormer's evolution under a typed budget, TAS-LoRA's model-based fitness, and the
search stage as a library verb (`run_search`). One module per job:

    config        SearchConfig (the evolution's settings), SearchError, the one --metric check
    constraints   Constraints: the typed budget (FLOPs/params bounds, counter, latency budget), its check, the span
    measures      cached FLOPs/params of subnets
    latency       the latency hook (a measured-latency lookup, only called after the cheap bounds pass), MeasureSpec,
                  the one check of a latency batch size and statistic
    latency_features / latency_fit / latency_design / latency_model
                  a latency model: per-block features and lookup terms, the fit and its choice of form by
                  cross-validation, which subnets to measure, latency-model.json
    latency_setup the search's latency: measured per candidate, or predicted by a model (LatencyOptions)
    latency_verify measuring what a model-screened search returns (the next candidate on a budget breach)
    feasible      a feasible witness or a one-line InfeasibleConstraints
    messages      human descriptions of constraints and ranges
    operators     the candidate tuple, mutation, crossover
    evolution     EvolutionSearch (model-free: the fitness is injected), its resumable state, SearchResult
    objectives    the objectives of a Pareto search (--objectives loss,flops|params|latency) and their values
    nsga          NSGA-II: dominance, non-dominated sorting, crowding distance, selection, 2-D hypervolume
    pareto_file   pareto.json: ParetoFront / ParetoMember, write_pareto, the validating read_pareto
    random_search the random-sampling baseline
    fitness       validation data of a checkpoint and CheckpointFitness
    run_folder    the files of a search run folder
    run           run_search(SearchRunConfig) -> SearchRun
"""

from taslora_core.search.config import METRICS, InfeasibleConstraints, SearchConfig, SearchError, check_metric
from taslora_core.search.constraints import Constraints
from taslora_core.search.evolution import (
    STATE_FORMAT, STATE_VERSION, EvolutionSearch, FitnessFn, Record, SearchResult,
)
from taslora_core.search.latency import LatencyFn, LatencyLookup, MeasureSpec
from taslora_core.search.latency_model import LatencyModel, LatencyModelError, read_latency_model, write_latency_model
from taslora_core.search.latency_setup import LatencyOptions
from taslora_core.search.latency_verify import LatencyVerificationError
from taslora_core.search.measures import measure
from taslora_core.search.objectives import DEFAULT_OBJECTIVES, parse_objectives
from taslora_core.search.pareto_file import (
    ParetoFileError, ParetoFront, ParetoMember, check_same_space, read_pareto, write_pareto,
)
from taslora_core.search.operators import crossover, mutate, subnet_from_key
from taslora_core.search.random_search import random_search
from taslora_core.search.run import SearchEvents, SearchRun, SearchRunConfig, SearchStart, resumed_config, run_search

__all__ = [
    "DEFAULT_OBJECTIVES", "METRICS", "ParetoFileError", "ParetoFront", "ParetoMember", "STATE_FORMAT", "STATE_VERSION", "Constraints", "EvolutionSearch", "FitnessFn", "InfeasibleConstraints",
    "LatencyFn", "LatencyLookup", "LatencyModel", "LatencyModelError", "LatencyOptions", "LatencyVerificationError",
    "MeasureSpec", "Record", "SearchConfig", "SearchError", "SearchEvents", "SearchResult",
    "SearchRun", "SearchRunConfig", "SearchStart", "check_metric", "check_same_space", "crossover", "measure", "mutate",
    "parse_objectives", "random_search", "read_latency_model", "read_pareto", "resumed_config", "run_search",
    "subnet_from_key", "write_latency_model", "write_pareto",
]
