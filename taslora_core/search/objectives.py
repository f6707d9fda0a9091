"""The objectives of a Pareto search (all minimised): one quality objective and one cost objective, their names
on the command line (`--objectives loss,flops`) and their value in an evaluation record."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from taslora_core.search.config import SearchError
from taslora_core.search.constraints import DEFAULT_LATENCY_TARGET

__all__ = ["COST_OBJECTIVES", "DEFAULT_LATENCY_TARGET", "DEFAULT_OBJECTIVES", "LATENCY_TARGETS", "QUALITY_OBJECTIVES",
           "objective_value", "objective_vector", "parse_objectives"]

QUALITY_OBJECTIVES = {"loss": "validation cross-entropy", "error": "validation top-1 error (1 - top1)"}
COST_OBJECTIVES = {"flops": "FLOPs per image (by --counter)", "params": "parameters",
                   "latency": "latency in ms of one --latency-batch on --target (measured; with --latency-model "
                              "predicted during the search, the returned front measured)"}
DEFAULT_OBJECTIVES = ("loss", "flops")
LATENCY_TARGETS = ("ort-cpu", "torch-cpu", "torch-cuda", "trt")
"""Targets a latency objective can be measured on (`taslora_deploy.latency_lookup` measures them)."""


def parse_objectives(value: str | Sequence[str]) -> tuple[str, str]:
    """('loss', 'flops') from 'loss,flops' (or a sequence): a quality objective, then a cost objective.
    Raises SearchError (one line, naming the choices) for anything else."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    choices = f"{'|'.join(QUALITY_OBJECTIVES)},{'|'.join(COST_OBJECTIVES)} (e.g. loss,flops)"
    unknown = [n for n in names if n not in QUALITY_OBJECTIVES and n not in COST_OBJECTIVES]
    if unknown:
        raise SearchError(f"unknown objective '{unknown[0]}' in --objectives {','.join(names)}; choose {choices}")
    if len(names) != 2 or names[0] not in QUALITY_OBJECTIVES or names[1] not in COST_OBJECTIVES:
        raise SearchError(f"--objectives {','.join(names)}: give one quality and one cost objective, {choices}")
    return names[0], names[1]


def objective_value(record: dict[str, Any], name: str, counter: str = "autoformer") -> float:
    """The value (lower is better) of objective `name` in an evaluation record; NaN/None become +inf so that a
    broken evaluation is dominated by every other one."""
    if name == "loss":
        value = record.get("loss", record.get("fitness"))
    elif name == "error":
        value = None if record.get("top1") is None else 1.0 - float(record["top1"])
    elif name == "flops":
        value = record[f"flops_{counter}"]
    elif name == "params":
        value = record["params"]
    elif name == "latency":  # a measurement wins over a latency model's prediction
        value = record.get("latency_ms")
        value = record.get("latency_predicted_ms") if value is None else value
    else:
        raise SearchError(f"unknown objective '{name}'")
    if value is None or math.isnan(float(value)):
        return math.inf
    return float(value)


def objective_vector(record: dict[str, Any], objectives: Sequence[str], counter: str = "autoformer") -> tuple[float, ...]:
    """The record's values of every objective, in order."""
    return tuple(objective_value(record, name, counter) for name in objectives)
