"""Human-readable descriptions of constraints and of the space's feasible range (for notes and errors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from taslora_core.complexity import format_amount
from taslora_core.search.measures import space_range
from taslora_core.space import SearchSpace

if TYPE_CHECKING:
    from taslora_core.search.constraints import Constraints


def describe(constraints: "Constraints") -> str:
    """'FLOPs (autoformer) <= 1.300G, params >= 5.000M' or 'no constraints'."""
    c, fa = constraints, format_amount
    parts = []
    if c.flops_min is not None:
        parts.append(f"FLOPs ({c.counter}) >= {fa(c.flops_min)}")
    if c.flops_max is not None:
        parts.append(f"FLOPs ({c.counter}) <= {fa(c.flops_max)}")
    if c.params_min is not None:
        parts.append(f"params >= {fa(c.params_min)}")
    if c.params_max is not None:
        parts.append(f"params <= {fa(c.params_max)}")
    if c.latency_max_ms is not None:
        parts.append(f"latency ({c.latency_target or 'measured'}, batch 1) <= {c.latency_max_ms:g} ms")
    return ", ".join(parts) if parts else "no constraints"


def describe_range(constraints: "Constraints", space: SearchSpace) -> str:
    """'the space spans FLOPs (autoformer) 8.284M .. 31.623M and params 147.210K .. 579.850K'."""
    r = space_range(constraints, space)
    fa = format_amount
    text = (
        f"the space spans FLOPs ({constraints.counter}) {fa(r['flops'][0])} .. {fa(r['flops'][1])} "
        f"and params {fa(r['params'][0])} .. {fa(r['params'][1])}"
    )
    if "latency_ms" in r:
        text += f" and latency {r['latency_ms'][0]:.3g} .. {r['latency_ms'][1]:.3g} ms ({constraints.latency_target})"
    return text
