"""Statistics against independently known values."""

import numpy as np
import pytest
from scipy.stats import norm

from rs_onnx import stats


def test_clopper_pearson_lower_known_value():
    # Cohen et al.'s worked case: 99,000 of 100,000 at alpha = 0.001.
    assert stats.clopper_pearson_lower(99_000, 100_000, 0.001) == pytest.approx(0.98898934, abs=1e-8)


def test_clopper_pearson_lower_closed_forms():
    # k = n: the bound solves p^n = alpha, so p = alpha^(1/n).
    assert stats.clopper_pearson_lower(100, 100, 0.01) == pytest.approx(0.01 ** (1 / 100), rel=1e-10)
    # k = 1 of n = 1: p = alpha.
    assert stats.clopper_pearson_lower(1, 1, 0.05) == pytest.approx(0.05, rel=1e-10)
    assert stats.clopper_pearson_lower(0, 10, 0.05) == 0.0
    # k = 0 upper bound: 1 - alpha^(1/n).
    assert stats.clopper_pearson_upper(0, 50, 0.01) == pytest.approx(1 - 0.01 ** (1 / 50), rel=1e-10)


def test_bounds_are_rounded_to_the_safe_side():
    from scipy.stats import beta

    exact = beta.ppf(0.001, 99_000, 1_001)
    assert stats.clopper_pearson_lower(99_000, 100_000, 0.001) < exact
    exact_up = beta.ppf(0.999, 51, 50)
    assert stats.clopper_pearson_upper(50, 100, 0.001) > exact_up
    assert stats.cohen_radius(0.99, 0.25) < 0.25 * norm.ppf(0.99)


def test_binomial_pvalue_known_values():
    # Exact: P(X <= 0 or X >= 10 | n=10, p=1/2) = 2 / 1024.
    assert stats.binomial_pvalue(10, 10) == pytest.approx(2 / 1024, rel=1e-12)
    # 60 of 100: two-sided p = 0.056887933640... (R: binom.test(60, 100)$p.value).
    assert stats.binomial_pvalue(60, 100) == pytest.approx(0.05688793364, rel=1e-8)
    assert stats.binomial_pvalue(50, 100) == pytest.approx(1.0)


def test_cohen_radius():
    assert stats.cohen_radius(0.5, 1.0) == 0.0
    assert stats.cohen_radius(0.3, 1.0) == 0.0
    assert stats.cohen_radius(norm.cdf(2.0), 0.5) == pytest.approx(1.0, rel=1e-9)


def test_argument_checks():
    with pytest.raises(ValueError):
        stats.clopper_pearson_lower(5, 4, 0.1)
    with pytest.raises(ValueError):
        stats.clopper_pearson_lower(1, 4, 1.5)


def test_top_two_ties_go_to_lower_index():
    assert stats.top_two(np.array([3, 5, 5, 1])) == (1, 5, 2, 5)


@pytest.mark.parametrize("alpha", [1e-300, 1e-50, 1e-12])
def test_bounds_hold_even_for_extreme_alpha(alpha):
    from scipy.stats import beta

    for k, n in [(99_000, 100_000), (5, 10), (100_000, 100_000 + 1)]:
        lo = stats.clopper_pearson_lower(k, n, alpha)
        assert 0.0 <= lo <= k / n and beta.cdf(lo, k, n - k + 1) <= alpha * (1 + 1e-9)
        up = stats.clopper_pearson_upper(k, n, alpha)
        assert k / n <= up <= 1.0
