"""Human-readable descriptions of constraints and of the space's feasible range (for notes and errors)."""

from __future__ import annotations

from taslora_core.complexity import format_amount
from taslora_core.search.constraints import Constraints
from taslora_core.search.measures import flops_of, params_of
from taslora_core.space import SearchSpace
from taslora_core.subnet import largest_subnet, smallest_subnet


def describe(constraints: Constraints) -> str:
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
        how = (f", predicted (+{100 * c.latency_slack:.1f}% slack), measured at the end" if c.latency_predicted
               else "")
        parts.append(f"latency ({c.latency_target or 'measured'}, batch {c.latency_batch}{how}) <= {c.latency_max_ms:g} ms")
    return ", ".join(parts) if parts else "no constraints"


def describe_range(constraints: Constraints, space: SearchSpace) -> str:
    """'the space spans FLOPs (autoformer) 8.284M .. 31.623M and params 147.210K .. 579.850K'."""
    r = constraints.feasible_range(space)
    fa = format_amount
    text = (
        f"the space spans FLOPs ({constraints.counter}) {fa(r['flops'][0])} .. {fa(r['flops'][1])} "
        f"and params {fa(r['params'][0])} .. {fa(r['params'][1])}"
    )
    if "latency_ms" in r:
        how = "predicted" if constraints.latency_predicted else "measured"
        text += (f" and latency {r['latency_ms'][0]:.3g} .. {r['latency_ms'][1]:.3g} ms ({how}, "
                 f"{constraints.latency_target}, batch {constraints.latency_batch})")
    return text


def non_binding(constraints: Constraints, space: SearchSpace) -> list[str]:
    """One note per FLOPs/params bound that excludes no subnet of the space (e.g. --flops 1.3G on a space whose
    largest subnet has 10.5M FLOPs): such a bound silently does nothing, so the user should hear it."""
    c, fa = constraints, format_amount
    lo, hi = smallest_subnet(space), largest_subnet(space)
    spans = {"flops": (flops_of(space, lo, c.counter), flops_of(space, hi, c.counter)),
             "params": (params_of(space, lo), params_of(space, hi))}
    unit = {"flops": f"FLOPs ({c.counter})", "params": "params"}
    notes = []
    for what, (low, high) in spans.items():
        upper, lower = getattr(c, f"{what}_max"), getattr(c, f"{what}_min")
        if upper is not None and upper >= high:
            notes.append(f"--{what} {fa(upper)} does not bind: the largest subnet of space '{space.name}' has "
                         f"{fa(high)} {unit[what]}, so every subnet satisfies it (the space spans {fa(low)} .. {fa(high)})")
        if lower is not None and lower <= low:
            notes.append(f"--min-{what} {fa(lower)} does not bind: the smallest subnet of space '{space.name}' has "
                         f"{fa(low)} {unit[what]}, so every subnet satisfies it (the space spans {fa(low)} .. {fa(high)})")
    return notes
