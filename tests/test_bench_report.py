"""How bench/report.py settles a bound against its target from the passes of a run: by a
distribution-free confidence interval for the median, which must hold what it claims."""

from __future__ import annotations

import random

import pytest

from bench.report import CONFIDENCE, _met, _settled, median_interval


@pytest.mark.parametrize("n", [3, 5, 6, 8, 9, 10, 12, 16, 20])
def test_the_median_interval_covers_the_true_median_as_often_as_it_says(n: int) -> None:
    """Draw n passes from a skewed distribution with a known median, many times: the interval
    holds that median in the share of draws its coverage states (and at least CONFIDENCE
    once there are enough passes for an interval that leaves the extremes out)."""
    rng = random.Random(f"median-{n}")
    true_median = 1.0  # of exp(N(0, 1)): skewed, like a ratio of two throughputs
    trials, held = 20_000, 0
    coverage = median_interval([rng.lognormvariate(0, 1) for _ in range(n)])[2]
    for _ in range(trials):
        low, high, _ = median_interval([rng.lognormvariate(0, 1) for _ in range(n)])
        held += low <= true_median <= high
    assert held / trials == pytest.approx(coverage, abs=0.01)
    if n >= 6:
        assert coverage >= CONFIDENCE


def test_the_interval_is_as_narrow_as_the_confidence_allows() -> None:
    values = [float(v) for v in range(20)]
    assert median_interval(values[:3]) == (0.0, 2.0, 0.75)  # too few passes for 95%: the range
    assert median_interval(values[:8])[:2] == (0.0, 7.0)
    assert median_interval(values[:9])[:2] == (1.0, 7.0)  # the first that leaves the extremes out
    assert median_interval(values)[:2] == (5.0, 14.0)


def test_a_bound_is_settled_once_its_target_is_outside_the_interval() -> None:
    assert _settled([0.33, 0.36, 0.34], 0.35) is not None  # three passes on both sides
    many = [0.33, 0.34, 0.335, 0.345, 0.338, 0.342, 0.331, 0.336, 0.339, 0.356]
    assert _settled(many, 0.35) is None  # one stray pass of ten above the target
    assert _settled(many[:6] + [0.356], 0.35) is not None  # with seven, the range still decides
    assert "0.5×" in (_settled([0.44, 0.51, 0.48], 0.5) or "")


def test_a_proposed_share_is_met_missed_or_not_settled_by_the_same_interval() -> None:
    shares = [0.74, 0.71, 0.78, 0.73, 0.76, 0.72, 0.75, 0.77, 0.74, 0.69]
    assert _met(shares, 0.74, 0.7).startswith("met (median 0.710-0.770×")
    assert _met(shares, 0.74, 0.8).startswith("**missed** (median")
    assert _met(shares, 0.74, 0.75).startswith("not settled")
