"""NSGA-II's selection on objective vectors (all minimised): Pareto dominance, non-dominated sorting, crowding
distance, survivor selection, and the 2-D hypervolume that measures a front's quality.

Pure functions on tuples of floats: the evolution (`evolution.py`) maps records to vectors and back. Ties are
broken by an explicit key so that the selection is deterministic for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """True when `a` is no worse than `b` in every objective and better in at least one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated_sort(points: Sequence[Point]) -> list[list[int]]:
    """Indices of `points` grouped into fronts: front 0 is non-dominated, front 1 is non-dominated once front 0
    is removed, ... (Deb et al.'s fast non-dominated sort, O(M N^2)). Equal points share a front."""
    n = len(points)
    dominated_by: list[list[int]] = [[] for _ in range(n)]  # i -> the points i dominates
    count = [0] * n  # how many points dominate i
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominated_by[i].append(j)
                count[j] += 1
            elif dominates(points[j], points[i]):
                dominated_by[j].append(i)
                count[i] += 1
    fronts: list[list[int]] = []
    current = [i for i in range(n) if count[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(j)
        current = sorted(nxt)
    return fronts


def pareto_indices(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points (front 0), in input order (two objectives: one sorted sweep, so the
    whole history of a search costs N log N, not N^2)."""
    if not points:
        return []
    if any(len(p) != 2 for p in points):
        return sorted(non_dominated_sort(points)[0])
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    kept: list[int] = []
    lowest: float | None = None  # lowest second objective of the points before the current group of equal points
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and tuple(points[order[end]]) == tuple(points[order[start]]):
            end += 1
        y = points[order[start]][1]
        if lowest is None or y < lowest:  # earlier points have x <= this x; one with y <= this y (and not equal) dominates it
            kept.extend(order[start:end])
        lowest = y if lowest is None else min(lowest, y)
        start = end
    return sorted(kept)


def crowding_distance(points: Sequence[Point], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each index of `front`: the sum over objectives of the normalised gap
    between its two neighbours; the extremes of every objective get +inf (always kept)."""
    dist = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for m in range(len(points[front[0]])):
        order = sorted(front, key=lambda i: (points[i][m], i))
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        span = hi - lo
        if not math.isfinite(span) or span <= 0:
            continue
        for prev, cur, nxt in zip(order, order[1:], order[2:]):
            dist[cur] += (points[nxt][m] - points[prev][m]) / span
    return dist


def nsga_select(points: Sequence[Point], k: int, tiebreak: Sequence[Hashable] | None = None) -> list[int]:
    """NSGA-II survivor selection: the indices of the `k` best points by (front, larger crowding distance),
    ties broken by `tiebreak[i]` (default: the index). Returned best first."""
    ties = list(tiebreak) if tiebreak is not None else list(range(len(points)))
    chosen: list[int] = []
    for front in non_dominated_sort(points):
        crowd = crowding_distance(points, front)
        ranked = sorted(front, key=lambda i: (-crowd[i], ties[i]))
        chosen.extend(ranked[: max(k - len(chosen), 0)])
        if len(chosen) >= k:
            break
    return chosen


def hypervolume_2d(points: Sequence[Point], reference: Point) -> float:
    """Area dominated by `points` (two minimised objectives) and bounded by `reference`; points that do not
    dominate the reference strictly in both objectives add nothing. Larger is better."""
    inside = sorted((float(p[0]), float(p[1])) for p in points if p[0] < reference[0] and p[1] < reference[1])
    area, best_y = 0.0, float(reference[1])
    for x, y in inside:  # sweep along the first objective; each new lower second objective adds a strip
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area
