"""How sure a table is: intervals over seeds, and differences against a baseline row.

Intervals are Student-t intervals over seeds (the seeds are the samples). A row is compared
with the baseline row on the same metric: paired by seed (a t-test on the per-seed
differences) when both ran the same seeds, Welch's unequal-variance t-test otherwise. With one
seed there is no interval, and nothing here invents one. The p-values of the rows compared
with one baseline are adjusted for how many there are (Holm's step-down by default), and
each comparison says the smallest difference its seeds could have shown.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass
class Interval:
    mean: float
    std: float  # nan with one value
    low: float  # nan with one value
    high: float
    n: int


@dataclass
class Difference:
    """``other - baseline``, with its interval and two-sided p-value (nan where unknown)."""

    diff: float
    low: float
    high: float
    p: float
    test: str  # "paired", "Welch", or "n=1" where either side has a single seed
    n: int
    se: float = math.nan  # the difference's standard error
    dof: float = math.nan  # and its degrees of freedom

    def detectable(self, confidence: float) -> float:
        """The smallest difference these seeds could have shown at ``confidence``: a
        difference of this size would have been just significant, given the spread and n
        (nan where no test is possible)."""
        if not self.se > 0:
            return math.nan
        return t_quantile(confidence, self.dof) * self.se


def t_quantile(confidence: float, dof: float) -> float:
    from scipy import stats

    return float(stats.t.ppf((1 + confidence) / 2, dof))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` with its t-interval (nan bounds for fewer than two values)."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, n)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return Interval(mean, std, mean - half, mean + half, n)


def _t_test(diff: float, se: float, dof: float, confidence: float) -> tuple[float, float, float]:
    """Interval and two-sided p-value of ``diff`` with standard error ``se``; with no spread
    at all (``se`` 0) the test is undefined and the p-value is nan, never a false certainty."""
    from scipy import stats

    if se == 0:
        return diff, diff, math.nan
    half = t_quantile(confidence, dof) * se
    p = 2 * float(stats.t.sf(abs(diff) / se, dof))
    return diff - half, diff + half, p


def compare(
    baseline: Mapping[int, float], other: Mapping[int, float], confidence: float = 0.95
) -> Difference:
    """``other - baseline`` from per-seed values ({seed: value}): paired when both ran the
    same seeds, Welch's test otherwise."""
    b, o = list(baseline.values()), list(other.values())
    diff = sum(o) / len(o) - sum(b) / len(b) if b and o else math.nan
    if len(b) < 2 or len(o) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, "n=1", min(len(b), len(o)))
    if set(baseline) == set(other):
        deltas = [other[s] - baseline[s] for s in sorted(baseline)]
        spread = mean_interval(deltas, confidence)
        se = spread.std / math.sqrt(len(deltas))
        low, high, p = _t_test(spread.mean, se, len(deltas) - 1, confidence)
        return Difference(spread.mean, low, high, p, "paired", len(deltas), se, len(deltas) - 1)
    vb, vo = (mean_interval(x).std ** 2 for x in (b, o))
    se = math.sqrt(vb / len(b) + vo / len(o))
    if se == 0:
        dof = len(b) + len(o) - 2
    else:  # Welch-Satterthwaite
        dof = se**4 / ((vb / len(b)) ** 2 / (len(b) - 1) + (vo / len(o)) ** 2 / (len(o) - 1))
    low, high, p = _t_test(diff, se, dof, confidence)
    return Difference(diff, low, high, p, "Welch", min(len(b), len(o)), se, dof)


CORRECTIONS = ("holm", "bonferroni", "none")


def adjust(p_values: Sequence[float], method: str) -> list[float]:
    """The p-values adjusted for their number (nan, a comparison that had no test, is kept and
    not counted): each p scaled by what its level asks of it (``levels`` at alpha 1: m for
    Bonferroni, m - k + 1 for Holm's k-th smallest) and never below the one before it, which
    is Holm's step-down. Checked against statsmodels' ``multipletests`` in the tests."""
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}: one of {', '.join(CORRECTIONS)}")
    scale = levels(p_values, 1.0, method)
    adjusted, running = list(map(float, p_values)), 0.0
    for i in tested_in_order(p_values):
        running = max(running, min(1.0, p_values[i] / scale[i]))
        adjusted[i] = running
    return adjusted


def tested_in_order(p_values: Sequence[float]) -> list[int]:
    """The positions of the comparisons that were tested, smallest p first."""
    return sorted(
        (i for i, p in enumerate(p_values) if not math.isnan(p)), key=p_values.__getitem__
    )


def levels(p_values: Sequence[float], alpha: float, method: str) -> list[float]:
    """The significance level each comparison is tested at under a correction (nan where no
    test was made): ``alpha`` with none, ``alpha / m`` with Bonferroni, and with Holm
    ``alpha / (m - k + 1)`` for the comparison with the k-th smallest p-value."""
    tested = tested_in_order(p_values)
    m = len(tested)
    found = [math.nan] * len(p_values)
    for rank, i in enumerate(tested):
        found[i] = {"holm": alpha / (m - rank), "bonferroni": alpha / m}.get(method, alpha)
    return found
