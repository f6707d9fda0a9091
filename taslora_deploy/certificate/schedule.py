"""When the latency test looks at its pairs, and how much error each look may spend (alpha spending).

The test decides at several looks (it stops early when the evidence is already clear), and each look is a chance
to err: at a nominal 5% per look, 5 looks err up to ~14% of the time and 10 looks ~19%. So the error the whole
test may make, ``alpha``, is *spent* over the looks: look ``j`` at ``n_j`` of the ``N`` planned pairs tests at the
nominal level ``f(t_j) - f(t_{j-1})`` with ``t = n / N`` and the O'Brien-Fleming-like spending function of Lan and
DeMets (one-sided)::

    f(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t)),   f(1) = alpha

which spends almost nothing early (at t = 1/4 about 0.2% of alpha, at t = 1/2 about 11%) and most at the planned
end, so early stops need overwhelming evidence and the last look keeps nearly the full level. The final look (the
last planned one, or the one the time limit forces earlier) spends whatever is left: the nominal levels of all
looks sum to ``alpha``, so by the union bound the chance that *any* look errs is at most ``alpha`` whatever the
correlation between looks (the bound is loose by the small amount the looks' correlation saves). The looks
themselves are planned before the first pair (``N`` from the measured pair time and the time limit, halving down
to the first look), so when a look happens never depends on the timings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

__all__ = ["SPENDING", "spent", "planned_looks", "LookSchedule"]

SPENDING = "O'Brien-Fleming-like alpha spending (Lan-DeMets, one-sided), union bound over the looks"


def spent(t: float, alpha: float) -> float:
    """Error spent by information fraction ``t`` (pairs so far / planned pairs) of a test of total ``alpha``."""
    if t <= 0.0:
        return 0.0
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    return min(alpha, 2.0 * (1.0 - NormalDist().cdf(z / math.sqrt(min(t, 1.0)))))


def planned_looks(planned_pairs: int, first_pairs: int) -> tuple[int, ...]:
    """Pair counts of the looks: the planned total, halved until the next half would fall below ``first_pairs``
    (e.g. 1500 pairs, first 100: 187, 375, 750, 1500); one look when the plan is shorter than ``first_pairs``."""
    if planned_pairs < 2 or first_pairs < 2:
        raise ValueError(f"need at least 2 planned pairs and 2 pairs at the first look, got {planned_pairs} and "
                         f"{first_pairs}")
    looks = [int(planned_pairs)]
    while looks[-1] // 2 >= first_pairs:
        looks.append(looks[-1] // 2)
    return tuple(reversed(looks))


@dataclass(frozen=True)
class LookSchedule:
    """The planned looks of one test; :meth:`nominal` gives the level of each for a total error ``alpha``."""

    planned_pairs: int
    looks: tuple[int, ...]

    @staticmethod
    def plan(planned_pairs: int, first_pairs: int) -> "LookSchedule":
        """Looks at :func:`planned_looks`."""
        return LookSchedule(int(planned_pairs), planned_looks(planned_pairs, first_pairs))

    def nominal(self, index: int, final: bool, alpha: float) -> float:
        """The one-sided level of look ``index`` (0-based) of a test of total error ``alpha``: its increment of
        the spending function, or at the final look all that the earlier looks left unspent."""
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"the error level must be in (0, 0.5), not {alpha}")
        before = spent(self.looks[index - 1] / self.planned_pairs, alpha) if index > 0 else 0.0
        if final:
            return alpha - before
        return spent(self.looks[index] / self.planned_pairs, alpha) - before

    def levels(self, alpha: float) -> list[float]:
        """The level of every planned look when the test runs to its planned end."""
        return [self.nominal(j, j == len(self.looks) - 1, alpha) for j in range(len(self.looks))]

    def to_dict(self, **alphas: float) -> dict[str, Any]:
        """What the certificate records: the spending, the planned pairs, each look with its level per error."""
        levels = {name: self.levels(a) for name, a in alphas.items()}
        return {"spending": SPENDING, "planned_pairs": self.planned_pairs, **alphas,
                "looks": [{"pairs": n, **{name: lv[j] for name, lv in levels.items()}}
                          for j, n in enumerate(self.looks)]}
