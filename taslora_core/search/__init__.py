"""Architecture search: AutoFormer's evolution under a typed budget, TAS-LoRA's model-based fitness, and the
search stage as a library verb (`run_search`). One module per job:

    config        SearchConfig (the evolution's settings), SearchError, the one --metric check
    constraints   Constraints: the typed budget (FLOPs/params bounds, counter, latency budget) and its check
    measures      cached FLOPs/params of subnets, the space's span
    latency       the latency hook (a measured-latency lookup, only called after the cheap bounds pass)
    feasible      a feasible witness or a one-line InfeasibleConstraints
    messages      human descriptions of constraints and ranges
    operators     the candidate tuple, mutation, crossover
    evolution     EvolutionSearch (model-free: the fitness is injected), its resumable state, SearchResult
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
from taslora_core.search.latency import LatencyFn, LatencyLookup
from taslora_core.search.measures import measure
from taslora_core.search.operators import crossover, mutate, subnet_from_key
from taslora_core.search.random_search import random_search
from taslora_core.search.run import SearchEvents, SearchRun, SearchRunConfig, SearchStart, resumed_config, run_search

__all__ = [
    "METRICS", "STATE_FORMAT", "STATE_VERSION", "Constraints", "EvolutionSearch", "FitnessFn", "InfeasibleConstraints",
    "LatencyFn", "LatencyLookup", "Record", "SearchConfig", "SearchError", "SearchEvents", "SearchResult",
    "SearchRun", "SearchRunConfig", "SearchStart", "check_metric", "crossover", "measure", "mutate",
    "random_search", "resumed_config", "run_search", "subnet_from_key",
]
